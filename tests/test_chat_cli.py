"""`molora chat` and the Chat API in users' hands: the interactive session (prompt, /image and
/audio acknowledged and checked at once, /help, unknown commands answered, never sent to the
model), bad generation settings and non-conversation messages as MoLoRAErrors (one line from the
CLI), no warning on generate."""
from __future__ import annotations

import io
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import soundfile as sf
import torch

from conftest import drawn_image, synth_audio
from molora import Chat, MoLoRAConfig, MoLoRAModel, MoLoRAProcessor
from molora.chat_cli import PROMPT, Repl
from molora.errors import ArgumentError, MoLoRAError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chat():
    torch.manual_seed(0)
    cfg = MoLoRAConfig.preset("tiny")
    return Chat(MoLoRAModel(cfg).eval(), MoLoRAProcessor.from_config(cfg))


class Recorder:
    """A ChatSession stand-in that records what reaches the model."""

    def __init__(self, chat):
        self.chat, self.sent, self.resets = chat, [], 0

    def stream(self, text, images=(), audios=(), **kw):
        self.sent.append((text, list(images), list(audios)))
        yield "ok"

    def reset(self):
        self.resets += 1


def run_repl(chat, lines: list[str]):
    session, out, err = Recorder(chat), io.StringIO(), io.StringIO()
    Repl(session, {"max_new_tokens": 4}, out=out, err=err).run(iter([l + "\n" for l in lines]))
    return session, out.getvalue(), err.getvalue()


def test_interactive_commands_are_answered_and_never_sent(chat, tmp_path):
    drawn_image(64, 48).save(tmp_path / "chart.png")
    sf.write(tmp_path / "q.wav", synth_audio(0.5), 16000)
    session, out, err = run_repl(chat, [
        "/help", "/image", "/foo bar", f"/image {tmp_path / 'missing.png'}", f"/image {tmp_path / 'chart.png'}",
        f"/audio {tmp_path / 'q.wav'}", "what is this?", "/audio", "/reset", " /not a command", "/quit", "after"])
    assert out.count(PROMPT) == 11  # a prompt before every line read
    assert "/image PATH" in out and "/audio PATH" in out and "/reset" in out  # /help
    assert "usage: /image PATH" in out and "usage: /audio PATH" in out
    assert "unknown command /foo; /help lists the commands" in out
    assert f"{tmp_path / 'missing.png'}: file not found (not attached)" in err
    assert f"[attached image {tmp_path / 'chart.png'} (64x48)" in out
    assert f"[attached audio {tmp_path / 'q.wav'} (0.5 s at 16000 Hz)" in out
    # only the two messages reached the model: the first with both attachments (checked, loaded)
    assert [s[0] for s in session.sent] == ["what is this?", "/not a command"]
    (text, images, audios), (_, im2, au2) = session.sent
    assert len(images) == 1 and images[0].size == (64, 48) and len(audios) == 1 and audios[0][1] == 16000
    assert im2 == [] and au2 == [] and session.resets == 1
    assert "after" not in [s[0] for s in session.sent]  # /quit ended the session


def test_end_of_input_leaves_quietly(chat):
    session, out, _ = run_repl(chat, ["hello"])
    assert session.sent == [("hello", [], [])] and out.endswith(PROMPT + "\n")


def test_interactive_session_end_to_end():
    r = subprocess.run([sys.executable, "-m", "molora.cli", "chat", "--model", "tiny", "--max-new-tokens", "3"],
                       input="/image\n/oops\nhello\n/quit\n", cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(PROMPT) == 4 and "usage: /image PATH" in r.stdout and "unknown command /oops" in r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, r"temperature: must be >= 0"),
    ({"temperature": 1.0, "top_p": 2}, r"top_p: must be in \(0, 1\]"),
    ({"temperature": 1.0, "top_k": -3}, r"top_k: must be an integer >= 1"),
    ({"repetition_penalty": 0}, r"repetition_penalty: must be > 0"),
    ({"seed": "one"}, r"seed: must be an integer"),
    ({"max_new_tokens": True}, r"max_new_tokens: must be an integer"),
    ({"stop": 5}, r"stop: must be a non-empty string or a list"),
])
def test_bad_generation_settings_are_argument_errors(chat, kwargs, message):
    conv = [{"role": "user", "content": "hi"}]
    with pytest.raises(ArgumentError, match=message):
        chat.generate(conv, **{"max_new_tokens": 4, **kwargs})
    with pytest.raises(ArgumentError, match=message):
        list(chat.stream(conv, **{"max_new_tokens": 4, **kwargs}))


def test_top_k_minus_three_no_longer_reaches_torch(chat):
    """A negative top_k is refused naming it (it once reached torch: RuntimeError: selected index k out of range)."""
    with pytest.raises(MoLoRAError, match="top_k"):
        chat.generate([{"role": "user", "content": "hi"}], max_new_tokens=2, temperature=1.0, top_k=-3)


@pytest.mark.parametrize("messages, message", [
    ("What is in this chart?", r"messages: got str 'What is in this chart\?'; a conversation is a list"),
    ({"role": "user", "content": "hi"}, r"messages: got one message dict"),
    (["hi", "there"], r"messages\[0\]: expected a non-empty list of message dicts, got str"),
    ([{"role": "user", "content": "hi"}, "and?"], r"messages\[1\]: expected a message dict, got str 'and\?'"),
])
def test_messages_that_are_not_a_conversation(chat, messages, message):
    with pytest.raises(ArgumentError, match=message):
        chat.generate(messages, max_new_tokens=2)


def test_a_stop_string_and_a_single_path_are_one_item_each(chat, tmp_path):
    conv = [{"role": "user", "content": "tell me"}]
    full = chat.generate(conv, max_new_tokens=12)
    assert len(full) >= 4, repr(full)  # greedy, seeded weights: 12 tokens, each one character or more
    # a plain string is one stop string, not a set of characters: one whose first character the model
    # writes but that never occurs whole cuts nothing (as characters it would cut at full[1])
    never = full[1] + "\u2603"
    assert chat.generate(conv, max_new_tokens=12, stop=never) == full
    assert chat.generate(conv, max_new_tokens=12, stop=[never]) == full
    seen = full[2:4]  # one that occurs cuts the reply where it first begins
    assert chat.generate(conv, max_new_tokens=12, stop=seen) == full[:full.index(seen)]
    assert chat.generate(conv, max_new_tokens=12, stop=[seen]) == full[:full.index(seen)]
    drawn_image(30, 30).save(tmp_path / "one.png")
    turn = chat.session().user_turn("x", images=str(tmp_path / "one.png"))
    assert [p["type"] for p in turn["content"]] == ["image", "text"]
    with pytest.raises(ArgumentError, match=r"unknown generation setting\(s\) \['temprature'\]"):
        list(chat.stream(conv, max_new_tokens=2, temprature=0.5))


def test_generate_and_stream_emit_no_warning(chat):
    conv = [{"role": "user", "content": [{"type": "image", "image": drawn_image(40, 40)},
                                         {"type": "text", "text": "what?"}]}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (FutureWarning from transformers included) fails
        chat.generate(conv, max_new_tokens=3)
        chat.generate([conv, conv], max_new_tokens=3, temperature=0.8, top_p=0.9, top_k=5, seed=0)
        "".join(chat.stream(conv, max_new_tokens=3))


@pytest.mark.parametrize("args, line", [
    (["--temperature", "-1", "hi"], "molora chat: error: temperature: must be >= 0 (0 or unset: greedy decoding), "
                                    "got -1.0"),
    (["--temperature", "1", "--top-p", "2", "hi"], "molora chat: error: top_p: must be in (0, 1], got 2.0"),
    (["--temperature", "1", "--top-k", "-3", "hi"], "molora chat: error: top_k: must be an integer >= 1 (0 or "
                                                   "unset: no top-k cut), got -3"),
    (["--audio", "", "hi"], "molora chat: error: audio: empty path"),
])
def test_cli_bad_arguments_are_one_line(args, line, capsys):
    from molora.cli import main

    assert main(["chat", "--model", "tiny", *args]) == 2
    assert capsys.readouterr().err.strip() == line


def test_a_clip_with_no_words_is_a_request_to_transcribe_it(chat, tmp_path, monkeypatch, capsys):
    """`molora chat --audio clip.wav` with no prompt (and `/audio` then an empty line) sends the prompt
    the speech adapter is trained with, not an empty message (which the tiny model answered with "4")."""
    from molora.cli import main
    from molora.prompts import ASR_PROMPT

    sf.write(tmp_path / "q.wav", synth_audio(0.5), 16000)
    session, _, _ = run_repl(chat, [f"/audio {tmp_path / 'q.wav'}", "", "/quit"])
    assert [text for text, _, _ in session.sent] == [ASR_PROMPT]
    seen = []
    real = Chat.session

    def recording(self, *a, **kw):
        s = real(self, *a, **kw)
        stream = s.stream

        def spy(text, *args, **kwargs):
            seen.append(text)
            return stream(text, *args, **kwargs)

        s.stream = spy
        return s

    monkeypatch.setattr(Chat, "session", recording)
    assert main(["chat", "--model", "tiny", "--audio", str(tmp_path / "q.wav"), "--max-new-tokens", "2"]) == 0
    assert main(["chat", "--model", "tiny", "--audio", str(tmp_path / "q.wav"), "--max-new-tokens", "2",
                 "what", "is", "this?"]) == 0
    assert seen == [ASR_PROMPT, "what is this?"]
