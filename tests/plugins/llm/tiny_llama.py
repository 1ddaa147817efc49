"""A tiny random Llama and a LoRA adapter for it, built on the spot: nothing comes from a hub.

The model is a `LlamaForCausalLM` (hidden 128, 2 layers, 2 heads of head_dim 64, which vLLM's
CPU attention accepts; 16 it does not) with random float32 weights; its byte-level BPE
tokenizer is trained by `tokenizers` on CORPUS and carries a Llama-like chat template. vLLM on
x86 CPU serves it in bfloat16 with dtype "auto" (it downcasts float32 checkpoints), or as
stored with dtype "float32". Both builders are deterministic: one seed, the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

SEED = 0
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
ROLES = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}"
    "\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
LLAMA = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2)
LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
CORPUS = """\
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.
A model server answers requests for predictions, streams tokens and reports its health.
Hello, how are you today? I am fine, thank you. What would you like to talk about?
Serving large language models on a small machine needs care with memory and threads.
Numbers like 0 1 2 3 4 5 6 7 8 9 10 42 100 2048 appear in logs, prices and dates.
The system prompt tells the assistant to be helpful, short and honest with the user.
Rivers run to the sea, mountains rise above the clouds, and forests grow in the rain.
Engineers write tests, read traces, fix bugs and ship releases every week of the year.
"""


def build_tokenizer():
    """The trained tokenizer, a `transformers.PreTrainedTokenizerFast` (not saved).

    Byte-level BPE (vocab 558 of a 1000 target): any text encodes and decodes back exactly;
    encoding prepends `<s>`; `apply_chat_template` renders CHAT_TEMPLATE, whose role markers
    are single special tokens. bos/eos/pad/unk ids are 0/1/2/3.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=[*SPECIAL.values(), *ROLES],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer)
    bos = SPECIAL["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
        additional_special_tokens=ROLES,
        **SPECIAL,
    )


def build_tiny_llama(path: Path, seed: int = SEED) -> Path:
    """Write a random tiny Llama with its tokenizer to `path` (created); return `path`.

    The folder holds config.json, generation_config.json, model.safetensors (float32, 471k
    parameters, 1.9 MB) and tokenizer.json, tokenizer_config.json, chat_template.jinja: it
    loads with `AutoModelForCausalLM`/`AutoTokenizer.from_pretrained(path)` and in vLLM as
    `model=str(path)`, with a context of up to 512 tokens.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(path)
    config = LlamaConfig(
        **LLAMA,
        num_key_value_heads=LLAMA["num_attention_heads"],
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(path)
    return path


def build_lora_adapter(model_dir: Path, path: Path, seed: int = SEED + 1) -> Path:
    """Write a random LoRA adapter for the model in `model_dir` to `path`; return `path`.

    PEFT's format, written without peft: adapter_config.json (r 8, alpha 16, on q_proj and
    v_proj) and adapter_model.safetensors, with A and B both random so that the adapter
    changes the model's outputs. It loads with `peft.PeftModel.from_pretrained` and in vLLM
    as a `LoRARequest` (with `enable_lora=True`, `max_lora_rank=8` or more).
    """
    import torch
    from safetensors.torch import save_file

    model_dir, path = Path(model_dir), Path(path)
    cfg = json.loads((model_dir / "config.json").read_text())
    hidden, rank = cfg["hidden_size"], LORA["r"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    heads = {"q_proj": cfg["num_attention_heads"], "v_proj": cfg["num_key_value_heads"]}
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(cfg["num_hidden_layers"]):
        for module in LORA["target_modules"]:
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            a = torch.randn(rank, hidden, generator=gen) / hidden**0.5
            b = torch.randn(heads[module] * head_dim, rank, generator=gen)
            tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = a, b
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", **LORA, "lora_dropout": 0.0}
    config |= {"bias": "none", "base_model_name_or_path": str(model_dir), "inference_mode": True}
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path
