"""Chat: batched generation equals one-by-one, streaming equals the whole text, sampling
controls, stop strings, limits, multi-turn history."""
from __future__ import annotations

import pytest
import torch

from conftest import drawn_image, randomize_, synth_audio
from molora import Chat, MoLoRAConfig, MoLoRAModel, MoLoRAProcessor
from molora.errors import MoLoRAError


@pytest.fixture(scope="module")
def chat():
    torch.manual_seed(0)
    cfg = MoLoRAConfig.preset("tiny")
    model = MoLoRAModel(cfg).eval()
    randomize_(model, seed=7)
    # favour printable ASCII so the decoded text is long enough to compare
    with torch.no_grad():
        model.language_model.embed_tokens.weight[97:123] *= 3
    return Chat(model, MoLoRAProcessor.from_config(cfg))


def convs():
    return [
        [{"role": "user", "content": "tell me something"}],
        [{"role": "user", "content": [{"type": "image", "image": drawn_image(90, 60, 2)},
                                      {"type": "text", "text": "what is this?"}]}],
        [{"role": "user", "content": [{"type": "audio", "audio": (synth_audio(0.8, seed=4), 16000)},
                                      {"type": "text", "text": "Transcribe the audio clip into text."}]}],
        [{"role": "system", "content": "short answers"},
         {"role": "user", "content": [{"type": "image", "image": drawn_image(50, 70, 3)},
                                      {"type": "audio", "audio": (synth_audio(0.6, seed=5), 16000)}]}],
    ]


def test_batched_equals_one_by_one(chat):
    batched = chat.generate(convs(), max_new_tokens=12)
    single = [chat.generate(c, max_new_tokens=12) for c in convs()]
    assert batched == single
    assert any(len(t) > 3 for t in single)  # non-trivial outputs


def test_stream_concatenates_to_generate(chat):
    for c in convs():
        pieces = list(chat.stream(c, max_new_tokens=16))
        text = chat.generate(c, max_new_tokens=16)
        assert len(text) > 3 and len(pieces) > 1  # non-trivial text, streamed in several pieces
        assert "".join(pieces) == text


def test_sampling_controls(chat):
    c = convs()[0]
    a = chat.generate(c, max_new_tokens=10, temperature=1.0, seed=3)
    b = chat.generate(c, max_new_tokens=10, temperature=1.0, seed=3)
    assert a == b  # seeded sampling is reproducible
    assert chat.generate(c, max_new_tokens=10, temperature=0.7, top_k=1, seed=1) == chat.generate(c, max_new_tokens=10)
    samples = {chat.generate(c, max_new_tokens=10, temperature=2.0, seed=s) for s in range(4)}
    assert len(samples) > 1


def test_repetition_penalty_definition():
    from molora.sampling import repetition_penalty

    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[0, 1, 1]])
    # CTRL's rule: positive logits of seen tokens divided, negative ones multiplied
    assert repetition_penalty(seen, scores, 2.0).tolist() == [[1.0, -2.0, 0.5, 3.0]]


def test_stop_strings(chat):
    c = convs()[0]
    full = chat.generate(c, max_new_tokens=16)
    assert len(full) > 3
    stop = full[2:4]
    cut = chat.generate(c, max_new_tokens=16, stop=[stop])
    assert cut == full[: full.find(stop)]
    assert "".join(chat.stream(c, max_new_tokens=16, stop=[stop])) == cut


def test_limits_give_clear_errors(chat):
    c = convs()[0]
    with pytest.raises(MoLoRAError, match="max_new_tokens"):
        chat.generate(c, max_new_tokens=0)
    small = Chat(chat.model, chat.processor, max_context=20)
    with pytest.raises(MoLoRAError, match="exceeds the context limit of 20"):
        small.generate(c, max_new_tokens=16)
    few = Chat(chat.model, chat.processor, max_images=1)
    two = [{"role": "user", "content": [{"type": "image", "image": drawn_image(20, 20)}] * 2}]
    with pytest.raises(MoLoRAError, match=r"conversation\[0\]: 2 images exceed the limit of 1"):
        few.generate(two)
    with pytest.raises(MoLoRAError, match="no messages"):
        chat.generate([])


def test_session_keeps_history_and_system_prompt(chat):
    s = chat.session(system_prompt="be brief")
    r1 = s.ask("hello", max_new_tokens=4)
    r2 = s.ask("what did I say?", images=[drawn_image(40, 40)], max_new_tokens=4)
    assert [m["role"] for m in s.history] == ["system", "user", "assistant", "user", "assistant"]
    assert s.history[2]["content"] == r1 and s.history[4]["content"] == r2
    assert r1 and r2  # non-empty answers, so the comparison below can fail
    # the second turn is generated with the whole history in the prompt
    expected = chat.generate(s.history[:4], max_new_tokens=4)
    assert r2 == expected
    s.reset()
    assert [m["role"] for m in s.history] == ["system"]


# ----------------------------------------------------------------------------------------
# issue 23: malformed messages are refused, naming the message and what is wrong
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    ({"role": "user"}, ("messages[1]", "no 'content' key")),
    ({"content": "hi"}, ("messages[1]", "no 'role' key")),
    ({"role": "robot", "content": "hi"}, ("messages[1]", "role must be one of", "'robot'")),
    ({"role": "user", "content": 5}, ("messages[1]", "content must be a string or a list", "int")),
    ({"role": "user", "content": ["hi"]}, ("messages[1].content[0]", "must be a dict", "str")),
    ({"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}, ("messages[1].content[0]", "'video'")),
    ({"role": "user", "content": [{"type": "text"}]}, ("messages[1].content[0]", "no 'text' key")),
    ({"role": "user", "content": [{"type": "text", "text": 3}]}, ("messages[1].content[0]", "'text' must be a string")),
    ({"role": "user", "content": [{"type": "image"}]}, ("messages[1].content[0]", "image part has no 'image'")),
])
def test_malformed_messages_are_refused_everywhere(chat, bad, words):
    messages = [{"role": "system", "content": "be brief"}, bad]
    for call in (lambda: chat.generate(messages, max_new_tokens=2), lambda: list(chat.stream(messages)),
                 lambda: chat.processor(messages)):
        with pytest.raises(MoLoRAError) as e:
            call()
        assert all(w in str(e.value) for w in words), str(e.value)
