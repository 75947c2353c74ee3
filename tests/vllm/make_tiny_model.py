"""Make a tiny, randomly initialised Llama for the real-vLLM tests, offline.

The model says nothing sensible: the tests measure the router against a real
vLLM server (its queue, usage, errors and metrics), not the answers. Nothing is
downloaded: the tokenizer is a byte-level BPE trained here on generated
sentences, with a Llama-3 style chat template, and the weights are random
(seeded, so every run makes the same model).

Usage: python make_tiny_model.py <output directory>
(run with the vLLM virtualenv's python: it needs torch, transformers, tokenizers)
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB_SIZE = 1024
SENTENCES = 4000
SEED = 1234

BOS, EOS, EOT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"
START_HEADER, END_HEADER = "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = [BOS, EOS, START_HEADER, END_HEADER, EOT, PAD]

# Llama 3's template: each turn is a header with the role, the trimmed content
# and <|eot_id|>; the generation prompt opens the assistant's header.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

SUBJECTS = "the router|a request|the GPU pool|our server|the model|a user|the budget|the ledger"
VERBS = "sends|answers|counts|routes|measures|stores|refuses|streams|prices|waits for"
OBJECTS = "every token|the prompt|a long answer|the next turn|a small job|the whole queue|costs"
ENDINGS = "today.|quickly.|again.|at noon.|in order.|on time.|without fail.|for now."
EXTRA = (
    "Hello! How are you? What is the capital of France? Compare event sourcing and CRUD "
    "step by step. def add(a, b): return a + b  # code 0123456789 {json: [1, 2, 3]}"
)


def sentences(rng: random.Random) -> Iterator[str]:
    """Yield generated sentences, plain and chat-shaped, for the tokenizer to learn from."""
    parts = [p.split("|") for p in (SUBJECTS, VERBS, OBJECTS, ENDINGS)]
    for i in range(SENTENCES):
        words = " ".join(rng.choice(p) for p in parts)
        yield words.capitalize() if i % 2 else f"{words} {rng.randint(0, 10_000)}"
        if i % 50 == 0:
            yield EXTRA


def make_tokenizer(rng: random.Random) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (any text encodes) and wrap it for transformers."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sentences(rng), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        additional_special_tokens=[EOS, START_HEADER, END_HEADER],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def main(out: Path) -> None:
    """Write the tokenizer and the random model to ``out``."""
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(rng)
    tokenizer.save_pretrained(out)
    ids = tokenizer.convert_tokens_to_ids
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 32: the CPU attention backend's minimum
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=ids(BOS),
        eos_token_id=[ids(EOT), ids(EOS)],
        pad_token_id=ids(PAD),
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    sample = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello!"}], add_generation_prompt=True, tokenize=False
    )
    print(
        f"tiny Llama in {out}: vocabulary {len(tokenizer)}, "
        f"{sum(p.numel() for p in model.parameters())} parameters, {size / 1e6:.1f} MB; "
        f"chat prompt {sample!r}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]).resolve())
