"""`make gpu-check` serving step: vLLM serves molora's ``phi4mm`` export and its greedy tokens are
compared with molora's, for a text, an image and an audio prompt.

    python benchmarks/gpu_serve_vllm.py --base DIR [--wheelhouse DIR] [--preset phi4-multimodal]
    make gpu-check VLLM_BASE=DIR [WHEELHOUSE=DIR]

1. A random full-size checkpoint (``--preset``, seed 0, non-zero LoRA B matrices: the adapters change
   the output) is exported with ``save_pretrained(dir, layout="phi4mm", base=DIR)``: ``--base`` is the
   official Phi-4-multimodal-instruct folder *without its weights* (remote code, tokenizer, processor
   and generation files, ~20 MB), since vLLM loads the config and processor classes from the folder's
   remote code (``--trust-remote-code``) and its processor needs the official tokenizer.
2. molora (bf16, on the GPU) generates ``--max-new-tokens`` greedy tokens per prompt, eos ignored.
3. vLLM, in its own venv (``--venv``, default /tmp/vllm-venv: its own torch, never molora's), runs the
   export with ``enable_lora=True`` and the adapter folders as LoRA modules: ``vision-lora/`` for the
   image prompt, ``speech-lora/`` for the audio prompt (as ``vllm serve DIR --trust-remote-code
   --enable-lora --max-lora-rank 320 --lora-modules speech=DIR/speech-lora vision=DIR/vision-lora``
   would), temperature 0, ``ignore_eos``.
4. Per prompt: whether the token lists are equal and, if not, where they first differ (two bf16
   implementations of random weights can part at a near tie; the report says after how many tokens).

Writes ``gpu_serve_vllm.json`` (``--out``; ``$OUT`` when set) and prints a summary.

**The lent machine has no network.** Its venv must be installed from wheels brought along. Fetch them
where pip has network (CPython 3.12, Linux x86-64, as on the lent machine), with their dependencies::

    python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d wheelhouse vllm==0.33.0
    huggingface-cli download microsoft/Phi-4-multimodal-instruct --exclude "*.safetensors" \\
        --local-dir phi4mm-base

and run with ``--wheelhouse wheelhouse --base phi4mm-base`` (the venv is then installed with
``pip install --no-index --find-links wheelhouse vllm``). vLLM and the torch it pins are well over the
device tool's 64 MiB carry limit, so this step runs on a GPU machine that holds the wheelhouse (or has
network, without ``--wheelhouse``), not through that tool's carried folders. It is not run by the test
suite: ``tests/test_gpu_serve_vllm.py`` checks what can be checked without vLLM (arguments, the export,
the vLLM requests, the comparison).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SAMPLING_RATE = 16000
LORA_FOR = {"text": None, "image": "vision", "audio": "speech"}  # prompt kind -> LoRA module served with it


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="the official Phi-4-multimodal-instruct folder (weights not needed)")
    ap.add_argument("--preset", default="phi4-multimodal")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--venv", default="/tmp/vllm-venv", help="vLLM's own virtual env (created when absent)")
    ap.add_argument("--wheelhouse", default=None, help="install vLLM from these wheels only (no network)")
    ap.add_argument("--vllm-version", default="0.33.0")
    ap.add_argument("--trust-remote-code", action="store_true",
                    help="let vLLM run the official folder's own modeling code (copied from --base): vLLM serves the "
                         "phi4mm layout only this way; molora itself never runs remote code, so the choice is yours")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--workdir", default=None, help="where the export goes (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_serve_vllm.json or ./gpu_serve_vllm.json)")
    return ap.parse_args(argv)


# -- the vLLM venv -------------------------------------------------------------------------------------

def install_commands(venv: Path, wheelhouse: str | None, version: str) -> list[list[str]]:
    """The commands that make ``venv`` a vLLM environment of its own (empty when it already has vLLM)."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import vllm"], capture_output=True).returncode == 0:
        return []
    source = ["--no-index", "--find-links", wheelhouse] if wheelhouse else []
    return [[sys.executable, "-m", "venv", str(venv)],
            [str(py), "-m", "pip", "install", "-q", *source, f"vllm=={version}"]]


# -- prompts -------------------------------------------------------------------------------------------

def prompts() -> dict[str, list[dict]]:
    from molora.prompts import ASR_PROMPT
    from molora.synthetic.media import drawn_image, synth_audio

    return {
        "text": [{"role": "user", "content": "Write one sentence about the sea."}],
        "image": [{"role": "user", "content": [{"type": "image", "image": drawn_image(640, 480, 1)},
                                               {"type": "text", "text": "What is in the picture?"}]}],
        "audio": [{"role": "user", "content": [{"type": "audio", "audio": (synth_audio(6.0, seed=2), SAMPLING_RATE)},
                                               {"type": "text", "text": ASR_PROMPT}]}],
    }


def vllm_requests(export: Path, convs: dict[str, list[dict]], processor, media_dir: Path) -> list[dict]:
    """One request per prompt for the child process: the prompt text (placeholders ``<|image_1|>`` /
    ``<|audio_1|>``, expanded by vLLM's processor), the media files and the LoRA folder served with it."""
    out = []
    for kind, conv in convs.items():
        req = {"kind": kind, "prompt": processor.apply_chat_template(conv), "image": None, "audio": None,
               "lora": None if LORA_FOR[kind] is None else str(export / f"{LORA_FOR[kind]}-lora")}
        for part in conv[-1]["content"] if isinstance(conv[-1]["content"], list) else []:
            if part["type"] == "image":
                req["image"] = str(media_dir / f"{kind}.png")
                part["image"].save(req["image"])
            elif part["type"] == "audio":
                req["audio"] = str(media_dir / f"{kind}.npy")
                np.save(req["audio"], np.asarray(part["audio"][0], dtype=np.float32))
        out.append(req)
    return out


# runs in vLLM's venv: reads the requests, writes the greedy token ids
CHILD = r'''
import json, sys
import numpy as np
from PIL import Image
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest

spec = json.load(open(sys.argv[1]))
llm = LLM(model=spec["model"], trust_remote_code=spec["trust_remote_code"], dtype="bfloat16", enable_lora=True, max_lora_rank=320,
          max_loras=2, max_model_len=4096, limit_mm_per_prompt={"image": 1, "audio": 1}, seed=0)
params = SamplingParams(temperature=0.0, max_tokens=spec["max_new_tokens"], ignore_eos=True)
loras = {}
out = {}
for req in spec["requests"]:
    data = {}
    if req["image"]:
        data["image"] = Image.open(req["image"]).convert("RGB")
    if req["audio"]:
        data["audio"] = (np.load(req["audio"]), spec["sampling_rate"])
    lora = None
    if req["lora"]:
        lora = loras.setdefault(req["lora"], LoRARequest(req["lora"].rsplit("/", 1)[-1], len(loras) + 1, req["lora"]))
    result = llm.generate([{"prompt": req["prompt"], "multi_modal_data": data} if data else req["prompt"]], params,
                          lora_request=lora)
    out[req["kind"]] = list(result[0].outputs[0].token_ids)
json.dump(out, open(spec["result"], "w"))
'''


def run_vllm(venv: Path, export: Path, requests: list[dict], max_new_tokens: int, workdir: Path,
             trust_remote_code: bool = False) -> dict:
    spec = {"model": str(export), "requests": requests, "max_new_tokens": max_new_tokens,
            "trust_remote_code": trust_remote_code,  # the user's --trust-remote-code
            "sampling_rate": SAMPLING_RATE, "result": str(workdir / "vllm_tokens.json")}
    (workdir / "vllm_spec.json").write_text(json.dumps(spec))
    (workdir / "vllm_child.py").write_text(CHILD)
    subprocess.run([str(venv / "bin" / "python"), str(workdir / "vllm_child.py"), str(workdir / "vllm_spec.json")],
                   check=True, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    return json.loads((workdir / "vllm_tokens.json").read_text())


# -- molora's side and the comparison --------------------------------------------------------------------

def export_for_vllm(model, directory: Path, base: Path) -> list[str]:
    """The phi4mm export vLLM serves: the model's weights and adapters, the base folder's other files."""
    return model.save_pretrained(directory, layout="phi4mm", base=base)


@torch.no_grad()
def molora_tokens(model, processor, convs: dict[str, list[dict]], max_new_tokens: int, device) -> dict[str, list[int]]:
    out = {}
    for kind, conv in convs.items():
        batch = {k: v.to(device) for k, v in processor(conv).items()}
        out[kind] = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_ids=[])[0].tolist()
    return out


def compare_tokens(ours: list[int], theirs: list[int]) -> dict:
    """Equal or not, and where two greedy continuations part."""
    common = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    same = ours == theirs
    return {"same": same, "first_difference": None if same else common, "common_prefix": common,
            "molora_tokens": len(ours), "vllm_tokens": len(theirs)}


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_check import build_model

    from molora import MoLoRAProcessor
    from molora.errors import MoLoRAError
    from molora.official_folder import check_base

    try:
        base = check_base(args.base)
    except MoLoRAError as e:
        print(f"gpu_serve_vllm: error: {e}", file=sys.stderr)
        return 2
    if not args.trust_remote_code:
        print(f"gpu_serve_vllm: error: {args.base}: vLLM serves the phi4mm layout only by running the official "
              "folder's modeling code (trust_remote_code); pass --trust-remote-code (make gpu-check "
              "VLLM_TRUST_REMOTE_CODE=1) if you trust that folder", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the serving step needs a GPU", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    for cmd in install_commands(Path(args.venv), args.wheelhouse, args.vllm_version):
        subprocess.run(cmd, check=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        model, cfg = build_model(args.preset, torch.device("cpu"))
        export_for_vllm(model, work / "export", base)
        processor = MoLoRAProcessor.from_pretrained(str(work / "export"))
        convs = prompts()
        requests = vllm_requests(work / "export", convs, processor, work)
        ours = molora_tokens(model.to(device).eval(), processor, convs, args.max_new_tokens, device)
        model.cpu()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        theirs = run_vllm(Path(args.venv), work / "export", requests, args.max_new_tokens, work,
                          trust_remote_code=args.trust_remote_code)
    result = {"preset": args.preset, "vllm_version": args.vllm_version, "max_new_tokens": args.max_new_tokens,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "prompts": {k: {**compare_tokens(ours[k], theirs[k]), "lora": LORA_FOR[k], "molora": ours[k],
                              "vllm": theirs[k]} for k in ours},
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    out = Path(args.out) if args.out else Path(os.environ.get("OUT", ".")) / "gpu_serve_vllm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for kind, r in result["prompts"].items():
        print(f"{kind:6s} lora={r['lora']}: {'same' if r['same'] else 'differ at token ' + str(r['first_difference'])} "
              f"({r['common_prefix']}/{r['molora_tokens']} tokens in common)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
