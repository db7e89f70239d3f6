"""Run the Open ASR leaderboard's own scoring code at a named commit and record what it does, as data.

Two outputs per protocol, both JSON:

* ``eval/protocol_data/<protocol>.json``: the rule tables of the leaderboard's English normaliser at
  that commit (filler pattern, contraction/title replacers in order, spelling map, name map,
  compound patterns, whether spaced acronyms are collapsed), read from an instance of its
  ``EnglishTextNormalizer``, plus the repository and commit they come from. molora's normaliser
  (``molora.eval.normalizer``) is its own code driven by these tables.
* ``tests/data/open_asr_golden_<protocol>.json``: golden vectors. Thousands of generated transcripts
  (spelling-map entries, names, apostrophes, spaced acronyms, fillers, numbers, currency, compounds,
  brackets, Unicode) with the leaderboard normaliser's output, and generated result sets scored by the
  leaderboard's own ``score_results`` (WER rounded as it rounds, insertion/deletion/substitution counts
  where it reports them, RTFx), chunked sets included for the current protocol.

Usage (the checkout holds at least ``normalizer/`` of huggingface/open_asr_leaderboard at the commit)::

    git -C MIRROR archive d1e99b2 normalizer | tar -x -C /tmp/oal-d1e99b2
    python scripts/open_asr_reference.py --protocol open-asr-2026 --checkout /tmp/oal-d1e99b2 --commit d1e99b2...
    git -C MIRROR archive 228bb78 normalizer | tar -x -C /tmp/oal-228bb78
    git -C EVALUATE_MIRROR archive b39b266 metrics/wer | tar -x -C /tmp/evaluate   # evaluate.load("wer")'s code
    python scripts/open_asr_reference.py --protocol open-asr --checkout /tmp/oal-228bb78 --commit 228bb78... \
        --evaluate-wer /tmp/evaluate/metrics/wer --evaluate-commit b39b266...

with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 (nothing is downloaded).

Run it with the leaderboard's scoring requirements (regex, kaldialign, jiwer, num2words, evaluate, datasets),
not with molora: nothing here imports molora. The generator is seeded; the same checkout gives the same files.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = "huggingface/open_asr_leaderboard"
ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------
# the tricky material the generator draws from
# ----------------------------------------------------------------------------------------
FILLERS = ["hmm", "mm", "mhm", "mmm", "uh", "um", "ah", "aha", "ahh", "ahm", "eh", "ehehe", "em", "hm", "huh", "hum",
           "mhum", "uhm", "umm", "uhuh", "Uh", "UM", "Huh?", "mm-hmm", "uh-huh", "hmmm", "erm", "er"]
CONTRACTIONS = ["won't", "can't", "let's", "ain't", "y'all", "wanna", "gotta", "gonna", "i'ma", "imma", "woulda",
                "coulda", "shoulda", "ma'am", "John's", "it's", "he's been", "she'd gone", "what's", "that's",
                "who's", "here's", "there's", "how's", "when's", "where's", "why's", "this's", "they'll", "we've",
                "I'm", "isn't", "you're", "he'd", "she's got", "it's done", "Charles's", "students'", "'tis",
                "rock 'n' roll", "o'clock", "don 't", "can ' t", "it 's", "O'Neil", "James'", "’s", "it’s", "'em",
                "'cause", "he'd been", "we'd done"]
TITLES = ["Mr.", "Mrs.", "St.", "Dr.", "Prof.", "Capt.", "Gov.", "Ald.", "Gen.", "Sen.", "Rep.", "Pres.", "Rev.",
          "Hon.", "Asst.", "Assoc.", "Lt.", "Col.", "Jr.", "Sr.", "Esq.", "mr", "ST", "Dr"]
NUMBERS = ["twenty five", "one hundred and twenty three", "two point five", "three and a half", "1,000",
           "$20 million", "twenty dollars and five cents", "fifty percent", "5%", "one oh one", "double seven",
           "triple zero", "nineteen sixties", "21st", "2nd", "minus five", "1960s", "ones", "£3.50", "€10", "¢5",
           "0.5", "three thousand and one", "first", "sixteenth", "a hundred", "one", "zero point two",
           "two thousand twenty four", "nineteen eighty four", "10,000,000", "3.14159", "$0.07", "$2 and ¢7",
           "seven point oh five", "forty-two", "twenty-first", "hundreds", "millions", "1.5 billion",
           "one million dollars", "negative ten", "plus two", "eleven twelve", "sixty per cent", "1 2 3",
           "four fifths", "a quarter", "3rd", "99 cents", "five pounds", "ten euros", "one and a half", "50 %",
           "1st of may", "192.168.0.1", "v2.0", "mp3", "2,5", "0", "oh", "o", "0.0", "100%", "hundredth"]
ACRONYMS = ["B B C", "b.b.c.", "U.S.A.", "U S A", "a b c", "i a m", "5 G", "F B I agent", "the U.N.", "A.I.",
            "I B M", "a i", "x y z", "p h d", "m r i", "i o u", "c e o", "u k", "4 k", "t v", "a", "I", "a b",
            "J. R. R. Tolkien", "D.C.", "e.g.", "i.e.", "n b a game", "r & d", "AT&T", "Q&A"]
COMPOUNDS = ["white paper", "whitepaper", "wi-fi", "Wi Fi", "wifi", "e-mail", "email", "E mail", "T-shirt",
             "t shirt", "x ray", "X-ray", "a.m.", "p.m.", "A M", "P M", "o.k.", "OK", "okay", "kay", "all right",
             "alright", "al right", "how ever", "however", "et cetera", "etcetera", "etc.", "sci-fi", "hi-fi",
             "lo-fi", "e-book", "e-commerce", "data base", "database", "week end", "weekend", "healthcare",
             "health care", "any more", "anymore", "every one", "everyone", "to day", "today", "base ball"]
BRACKETS = ["[laughter]", "<unk>", "(inaudible)", "{braces}", "[noise]", "<sil>", "(laughs)", "[ um ]", "( a b )",
            "[unfinished", "(nested (inner) outer)", "<b>bold</b>", "ignore_time_segment_in_scoring",
            "ignore time segment in scoring", "[", ")", "<>"]
PUNCTUATION = ["Hello, world!", "well... yes", "don't—stop", "\"quoted\"", "‘single’", "ok?", "yes; no: maybe",
               "a/b", "50-50", "C++", "#hashtag", "@user", "e=mc2", "***", "-", "—", "…", "?!", ".", "..5",
               "3 .5", "end.", "Mr.Smith", "U.S.", "www.example.com", "1.2.3", "$", "%", "£", "€", "¢"]
UNICODE = ["café", "naïve", "Øresund", "straße", "STRASSE", "Æsir", "œuvre", "ﬁnance", "ﬂour", "Ｆｕｌｌｗｉｄｔｈ",
           "cafe\u0301", "🎉 party", "½", "x²", "Łódź", "Đorđe", "þorn", "ΐ", "İstanbul", "ǅemal", "ſ", "ı",
           "Ǆ", "ŉ", "Ωmega", "日本語", "résumé", "Zoë", "coöperate", "São Paulo", "Ærø", "ℌ", "Ⅻ", "١٢٣",
           "\u00a0nbsp\u00a0", "tab\there", "new\nline", "  padded  ", "\u200bzero width"]
NAMES = ["Alan", "Allan", "Jon", "John", "Sara", "Sarah", "Stephen", "Steven", "Mohamed", "Muhammad", "Geoff",
         "Jeff", "Katherine", "Kathryn", "Micheal", "Michael", "MacDonald", "Mcdonald", "Bryan", "Shawn", "Lewis",
         "Marc", "Theresa", "Lindsey", "Kris", "Karl", "Erik", "Tomas"]
PLAIN = ["the", "cat", "sat", "on", "mat", "and", "we", "will", "report", "quarterly", "revenue", "growth", "of",
         "customer", "service", "colour", "centre", "programme", "analyse", "organisation", "travelling",
         "archaeology", "archaeological", "cancellation", "flyer", "travelogue", "snowploughs", "pummelled",
         "colorful", "favorite", "grey", "theatre", "litre", "defence", "licence", "practise", "catalogue",
         "dialogue", "aluminium", "tyre", "kerb", "cheque", "a", "i", "is", "to", "in", "that", "have", "it"]


def _vocabulary(spelling: dict, names: dict, rng: random.Random) -> list[list[str]]:
    """Pools of pieces; map entries are sampled from the checkout's own tables (both sides of each pair)."""
    spell = [w for pair in rng.sample(sorted(spelling.items()), min(600, len(spelling))) for w in pair]
    name_items = sorted(names.items())
    name_pool = [w.capitalize() for pair in name_items for w in pair] + NAMES
    return [FILLERS, CONTRACTIONS, TITLES, NUMBERS, ACRONYMS, COMPOUNDS, BRACKETS, PUNCTUATION, UNICODE,
            name_pool, spell, PLAIN, PLAIN]


def _styled(piece: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        return piece.upper()
    if r < 0.3:
        return piece.capitalize()
    return piece


def _sentence(pools: list[list[str]], rng: random.Random, max_pieces: int = 8) -> str:
    pieces = [_styled(rng.choice(rng.choice(pools)), rng) for _ in range(rng.randint(1, max_pieces))]
    out = pieces[0]
    for p in pieces[1:]:
        out += rng.choice([" ", " ", " ", "  ", ", ", ". ", "-", "\t", " ' ", "'"]) + p
    if rng.random() < 0.3:
        out += rng.choice([".", "?", "!", "...", ",", " "])
    return out


def normalizer_inputs(pools: list[list[str]], rng: random.Random, n: int) -> list[str]:
    """Every listed piece alone, then ``n`` generated sentences."""
    singles = [p for pool in pools[:11] for p in pool]
    return list(dict.fromkeys(singles + [_sentence(pools, rng) for _ in range(n)]))


def _perturb(ref: str, pools: list[list[str]], rng: random.Random) -> str:
    words = ref.split()
    for _ in range(rng.randint(0, 3)):
        op = rng.random()
        if not words:
            words = [rng.choice(PLAIN)]
        i = rng.randrange(len(words))
        if op < 0.2:
            del words[i]
        elif op < 0.4:
            words[i] = _styled(rng.choice(rng.choice(pools)), rng)
        elif op < 0.55:
            words.insert(i, rng.choice(rng.choice(pools)))
        elif op < 0.7 and i + 1 < len(words):          # join two words: a compound written as one
            words[i:i + 2] = [words[i] + words[i + 1]]
        elif op < 0.8 and len(words[i]) > 3:          # split a word: a compound written as two
            k = rng.randrange(1, len(words[i]))
            words[i:i + 1] = [words[i][:k], words[i][k:]]
        elif op < 0.9:
            words[i] = words[i].upper()
        else:
            words.insert(i, rng.choice(FILLERS))
    return " ".join(words) if rng.random() > 0.03 else ""


def wer_sets(pools: list[list[str]], rng: random.Random, n: int, chunked: bool) -> list[dict]:
    """Result sets: rows of ``text`` / ``pred_text`` / ``duration`` / ``time`` (multiples of 1/1024 s, so every
    sum is exact); with ``chunked`` some sets are calls cut into chunks (``parent_id`` / ``chunk_index``, rows
    shuffled), each chunk carrying the call's whole text as the chunked Earnings22 set does."""
    out = []
    for k in range(n):
        rows = []
        if chunked and k % 5 == 4:
            for call in range(rng.randint(1, 3)):
                text = " ".join(_sentence(pools, rng) for _ in range(rng.randint(2, 4)))
                for idx in range(rng.randint(1, 4)):
                    rows.append({"text": text, "pred_text": _perturb(_sentence(pools, rng), pools, rng),
                                 "parent_id": f"call{call}", "chunk_index": idx})
            rng.shuffle(rows)
        else:
            for _ in range(rng.randint(1, 5)):
                ref = _sentence(pools, rng)
                rows.append({"text": ref, "pred_text": _perturb(ref, pools, rng)})
        for r in rows:
            r["duration"] = rng.randint(1024, 30 * 1024) / 1024
            r["time"] = rng.randint(1, 2048) / 1024
        out.append({"name": f"set{k:05d}", "rows": rows})
    return out


# ----------------------------------------------------------------------------------------
# the leaderboard code
# ----------------------------------------------------------------------------------------
def _import_leaderboard(checkout: Path):
    sys.path.insert(0, str(checkout))
    normalizer = importlib.import_module("normalizer.normalizer")
    return normalizer


def rules_of(normalizer_module) -> dict:
    """The rule tables of the checkout's ``EnglishTextNormalizer`` instance (what its ``__call__`` reads)."""
    n = normalizer_module.EnglishTextNormalizer()
    rules = {"fillers": n.ignore_patterns,
             "replacers": [[p, r] for p, r in n.replacers.items()],
             "spelling": dict(n.standardize_spellings.mapping)}
    if hasattr(n, "standardize_names"):
        rules["names"] = dict(n.standardize_names.mapping)
    if hasattr(n, "compound_words"):
        rules["compounds"] = [[p, r] for p, r in n.compound_words.items()]
    rules["collapse_acronyms"] = hasattr(n, "standardize_acronyms")
    return rules


def _commit_of(checkout: Path, given: str | None) -> str:
    if given and len(given) == 40:
        return given
    try:
        sha = subprocess.run(["git", "-C", str(checkout), "rev-parse", given or "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        return sha
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("give --commit (the full 40-hex commit the checkout was taken from)") from None


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def score_with_leaderboard(checkout: Path, sets: list[dict], protocol: str, evaluate_wer: Path | None) -> dict:
    """Each set through the leaderboard's pipeline: ``prepare_data``'s filter (normalised reference not empty and
    not "ignore time segment in scoring"), ``write_manifest``, then ``score_results`` on the folder.

    Classic protocol (2025): references and predictions are normalised before the manifest is written (as its
    run_eval.py did) and ``score_results`` computes WER with ``evaluate.load("wer")``, here loaded from a local
    copy of that metric. Current protocol: raw texts in the manifest, ``score_results`` normalises, merges
    chunks and calls kaldialign."""
    from normalizer import data_utils, eval_utils

    if evaluate_wer is not None:
        import evaluate

        real_load = evaluate.load
        evaluate.load = lambda name, *a, **k: real_load(str(evaluate_wer), *a, **k) if name == "wer" else \
            real_load(name, *a, **k)
    classic = protocol == "open-asr"
    kept: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory() as tmp, _cwd(Path(tmp)):
        for s in sets:
            idx = [i for i, r in enumerate(s["rows"])
                   if data_utils.is_target_text_in_range(data_utils.normalizer(r["text"]))]
            if not idx:
                continue
            rows = [s["rows"][i] for i in idx]
            norm = data_utils.normalizer if classic else (lambda t: t)
            extra = {k: [r.get(k) for r in rows] for k in ("parent_id", "chunk_index")} \
                if any("parent_id" in r for r in rows) else None
            kwargs = {"extra_fields": extra} if extra else {}
            data_utils.write_manifest([norm(r["text"]) for r in rows], [norm(r["pred_text"]) for r in rows],
                                      "golden/model", s["name"], "golden", "test",
                                      audio_length=[r["duration"] for r in rows],
                                      transcription_time=[r["time"] for r in rows], **kwargs)
            kept[s["name"]] = idx
        with contextlib.redirect_stdout(io.StringIO()):
            _, results = eval_utils.score_results(str(Path(tmp) / "results"), "golden/model")
    scored = {}
    for key, v in results.items():
        name = key.split("|")[1].strip().split("_")[0]
        scored[name] = {"kept_rows": kept[name], "wer": v["wer"], "rtfx": v["rtfx"],
                        **{k: v[k] for k in ("ins", "del", "sub") if k in v}}
    return scored


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", required=True, choices=["open-asr", "open-asr-2026"])
    ap.add_argument("--checkout", required=True, type=Path, help="directory holding the leaderboard's normalizer/")
    ap.add_argument("--commit", help="the commit the checkout is (read with git when the checkout is a work tree)")
    ap.add_argument("--evaluate-wer", type=Path, help="huggingface/evaluate's metrics/wer folder (classic protocol)")
    ap.add_argument("--evaluate-commit", help="the huggingface/evaluate commit of --evaluate-wer")
    ap.add_argument("--rules-out", type=Path)
    ap.add_argument("--golden-out", type=Path)
    ap.add_argument("--normalizer-cases", type=int, default=2500)
    ap.add_argument("--wer-sets", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args(argv)
    if args.protocol == "open-asr" and args.evaluate_wer is None:
        ap.error("the classic protocol scores with evaluate.load('wer'): give --evaluate-wer")
    checkout = args.checkout.resolve()
    commit = _commit_of(checkout, args.commit)
    source = {"repository": REPOSITORY, "commit": commit,
              "files": ["normalizer/normalizer.py", "normalizer/english_abbreviations.py",
                        "normalizer/data_utils.py", "normalizer/eval_utils.py"]}
    normalizer_module = _import_leaderboard(checkout)
    rules = rules_of(normalizer_module)
    rules_out = args.rules_out or ROOT / "eval" / "protocol_data" / f"{args.protocol}.json"
    rules_out.parent.mkdir(parents=True, exist_ok=True)
    rules_out.write_text(json.dumps({"protocol": args.protocol, "source": source, "normalizer": rules},
                                    indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    rng = random.Random(args.seed)
    pools = _vocabulary(rules["spelling"], rules.get("names", {}), rng)
    texts = normalizer_inputs(pools, rng, args.normalizer_cases)
    english = normalizer_module.EnglishTextNormalizer()
    cases = [[t, english(t)] for t in texts]
    sets = wer_sets(pools, rng, args.wer_sets, chunked=args.protocol == "open-asr-2026")
    scored = score_with_leaderboard(checkout, sets, args.protocol, args.evaluate_wer)
    import jiwer
    import kaldialign

    versions = {"jiwer": getattr(jiwer, "__version__", None) or _dist_version("jiwer"),
                "kaldialign": _dist_version("kaldialign"), "python": sys.version.split()[0]}
    if args.evaluate_wer is not None:
        versions["evaluate"] = _dist_version("evaluate")
        source["wer_metric"] = {"repository": "huggingface/evaluate", "path": "metrics/wer/wer.py",
                                "commit": args.evaluate_commit}
    golden = {"protocol": args.protocol, "source": source, "generator": {"script": "scripts/open_asr_reference.py",
                                                                           "seed": args.seed, "versions": versions},
              "normalizer": cases, "wer_sets": [{**s, **scored[s["name"]]} for s in sets if s["name"] in scored]}
    golden_out = args.golden_out or ROOT / "tests" / "data" / f"open_asr_golden_{args.protocol}.json"
    golden_out.parent.mkdir(parents=True, exist_ok=True)
    golden_out.write_text(json.dumps(golden, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"{rules_out}: rules of {REPOSITORY}@{commit[:7]}")
    print(f"{golden_out}: {len(cases)} normaliser cases, {len(golden['wer_sets'])} scored sets "
          f"({len(sets) - len(golden['wer_sets'])} had no scored reference)")
    return 0


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
