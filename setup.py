"""vllm-padrec: fast serving of LLM-based generative recommenders as a vLLM plugin.

The top-level ``kernels/`` folder is installed as ``vllm_padrec.kernels`` (a PyPI package called
``kernels`` exists, so the folder is kept under the project's namespace).
"""

from setuptools import find_packages, setup

setup(
    name="vllm-padrec",
    version="0.1.0",
    description="PAD-Rec speculative decoding and catalog-constrained decoding for LLM recommenders on vLLM",
    python_requires=">=3.10",
    packages=find_packages(include=["vllm_padrec", "vllm_padrec.*"]) + ["vllm_padrec.kernels"],
    package_dir={"vllm_padrec.kernels": "kernels"},
    install_requires=[
        "vllm==0.26.0",
        "torch",
        "transformers",
        "triton",
        "pydantic",
        # imported directly; all of them are also dependencies of vllm (or transformers) at these versions
        "numpy",
        "fastapi",  # the /v1/recommendations endpoint plugin
        "safetensors",  # checkpoints
        "tokenizers",  # the semantic-ID tokenizer
        "prometheus_client",  # vLLM's speculative-decoding counters in /v1/recommendations
        "psutil",  # free host memory, checked before training on the CPU
        # progress bars on long work; already a dependency of transformers and vllm
        "tqdm",
        # PNG plots of benchmark results and loss curves
        "matplotlib",
    ],
    extras_require={
        "test": [
            "pytest",
            "hypothesis",  # fuzz tests of the HTTP layer and the request-settings parser
            "scipy",  # statistical tests of speculative sampling (chi-square)
            "ruff==0.17.6",  # lint and format check (ruff.toml), run before the tests; pinned: its rules move
        ],
        "examples": ["openai"],  # examples/openai_client.py
    },
    entry_points={
        "console_scripts": ["vllm-padrec = vllm_padrec.cli:main"],
        "vllm.general_plugins": ["padrec = vllm_padrec:register"],
        "vllm.endpoint_plugins": ["padrec_recommendations = vllm_padrec.integration.endpoint:RecommendationsPlugin"],
    },
)
