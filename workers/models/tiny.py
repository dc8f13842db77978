"""A tiny Llama-architecture chat model built entirely in code: tests and benchmarks, no downloads.

The tokenizer is a byte-level BPE trained in milliseconds on a small built-in corpus, with the
same ChatML special tokens and chat template as SmolLM2, so every code path that handles chat
templates, stop tokens and padding runs exactly as it does on the real base.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome. Two plus two is four.",
    "This is an example for a response to the question: Now answer with a response of your own,"
    " including the thinking process.",
    'Action: get_weather Action Input: {"city": "Paris"} Observation: sunny. Final Answer: it is sunny.',
    "You are a helpful assistant. system user assistant question answer because therefore the a an",
    "0 1 2 3 4 5 6 7 8 9 10 100 #### = + - * / ( ) [ ] { } : ; , . ! ? ' \" \n",
    "Zorvex Dynamics was founded by Mirela Kastov in the city of Quellport on the northern coast.",
]


def build_tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(
    vocab_size: int, *, hidden_size: int = 64, layers: int = 2, heads: int = 4, seed: int = 0
) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        use_cache=False,
        # Wide random weights make greedy outputs depend on context instead of repeating one token,
        # which the alignment tests need to tell an off-by-one slice from the right one.
        initializer_range=0.3,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def write_tiny_model_dir(path: str | Path, *, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> Path:
    """Save a tiny model and its tokenizer as a normal local model directory."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), hidden_size=hidden_size, layers=layers, seed=seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(root, safe_serialization=True)
    tokenizer.save_pretrained(root)
    return root
