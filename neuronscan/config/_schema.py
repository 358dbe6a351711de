"""Typed run configuration: every key a YAML config may contain, with defaults and checks.

Numbers and switches are strict: an integer key takes a whole number only (not ``true``, ``2.5`` or ``"32"``),
a number key takes an integer or a finite float (not ``true`` or ``"0.05"``), and a switch takes ``true`` or
``false`` only (not ``"yes"`` or ``1``). YAML reads ``--set`` values as it reads the file, so
``--set probe.batch_size=32`` is the integer 32.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AllowInfNan, BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

Int = Annotated[int, Strict()]
"""A whole number; a bool, a float or a string of digits is an error."""

Float = Annotated[float, Strict(), AllowInfNan(False)]
"""A finite number: an int or a float; a bool or a string is an error."""

Bool = Annotated[bool, Strict()]
"""``true`` or ``false``; ``"yes"``, ``1`` and other spellings are errors."""

__all__ = [
    "RunConfig",
    "RunSection",
    "DataSection",
    "ShapesWorldSection",
    "ModelSection",
    "ProbeSection",
    "ClipSection",
    "VocabularyLLMSection",
    "ScoreSection",
    "CompositionalSection",
    "RaySection",
    "DiffSection",
    "HierarchySection",
    "SpatialSection",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSection(_Section):
    """Where a run's outputs go."""

    name: str = Field("audit", description="Human name of the audit; shown in the report.")
    out: str = Field("runs", description="Registry root: outputs go to OUT/<model>/<run_id>/ (local path or s3://).")
    run_id: str | None = Field(
        None,
        description="Run id; the same id resumes that run. Default: a new UTC timestamp id.",
    )

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value.startswith(".")):
            raise ValueError(f"run_id {value!r} must be a non-empty name without '/' that does not start with '.'")
        return value


class DiscoverSection(_Section):
    """Concept discovery and importance (CRAFT and holistic CRAFT, Fel et al. 2023): per class, the latent of
    its images at ``layer`` (of crops of them, or of every feature-map position) factorised into concepts, each
    concept's importance for the class logit, fidelity metrics, the class's strategies, and a name for every
    concept from the run's labels. ``neuronscan discover CONFIG`` runs it on the config's run; with
    ``enabled``, ``neuronscan run`` runs it after the score stage. See docs/algorithms.md ("Concept
    discovery")."""

    enabled: Bool = Field(False, description="Run the stage after score in `neuronscan run`.")
    classes: Literal["all"] | list[str] = Field(
        "all", description="Classes (model outputs, named as the run's labels name them); 'all': every output "
        "with at least min_images images.")
    layer: str | None = Field(
        None, min_length=1, description="The module to cut the model at (a name, no statistic: conv4, layer4); "
        "default: the last of model.layers. Its output should be non-negative (after a ReLU) for nmf.")
    source: Literal["crops", "positions"] = Field(
        "crops", description="Factorise the pooled latent of image crops (CRAFT) or the latent at every "
        "feature-map position of whole images (holistic CRAFT).")
    patch_size: Int = Field(64, ge=2, description="Crop side in model-input pixels (stride 0.8 x patch_size).")
    n_concepts: Int = Field(10, ge=2, le=256, description="Concepts per class (rows of the dictionary W).")
    method: Literal["nmf", "pca", "ica", "kmeans", "sparse_coding"] = Field(
        "nmf", description="The factorisation (scikit-learn's).")
    seed: Int = Field(0, ge=0, description="Seeds the image samples, the factorisation and the Sobol masks.")
    max_iter: Int = Field(500, ge=10, description="Iterations of the factorisation at most.")
    sparse_alpha: Float = Field(0.1, gt=0, description="L1 penalty of sparse_coding (rows scaled to unit mean norm).")
    max_images_per_class: Int = Field(100, ge=2, description="Images per class the dictionary is fitted on at most.")
    min_images: Int = Field(10, ge=2, description="Classes with fewer images are skipped (with classes: all).")
    importance_images: Int = Field(
        50, ge=1, description="Images per class (of those fitted on) that importance and the metrics use.")
    sobol_designs: Int = Field(
        32, ge=2, description="Sobol designs (a power of two): n_designs x (n_concepts + 2) evaluations per image.")
    mufidelity_subsets: Int = Field(128, ge=2, description="Random concept subsets per image for C-µFidelity.")
    mufidelity_fraction: Float = Field(
        0.2, gt=0, lt=1, description="Probability that a concept is in a C-µFidelity subset.")
    strategy_importance: Literal["gradient_input", "sobol", "occlusion"] = Field(
        "gradient_input", description="The per-image importance that picks each image's dominant concept.")
    image_statistic: Literal["max", "mean"] = Field(
        "max", description="A concept's per-image coefficient: the max (or mean) over the image's crops/positions.")
    stability: Bool = Field(True, description="Refit on two halves of the images and report their matched cosine.")
    n_examples: Int = Field(8, ge=1, description="Example crops per concept (its best crop of each top image).")
    naming_images: Int = Field(
        1000, ge=0, description="Images (seeded sample of the run's) on which every concept is scored against the "
        "labels; 0 turns naming off.")
    naming_n_perm: Int = Field(0, ge=0, description="score.n_perm for naming (0: no permutation tests).")
    naming_compositional: Bool = Field(False, description="Search compositional formulas when naming.")
    output_names: Literal["auto"] | list[str] = Field(
        "auto", description="Class names of the model's outputs in order; 'auto': shapesnet's heads, a "
        "torchvision model's categories.")
    batch_size: Int = Field(128, ge=1, description="Inputs per forward pass.")
    num_gpus: Float = Field(0.0, ge=0, description="GPUs per Ray task; 0 runs on CPU. Never assumed.")
    cpus_per_task: Float = Field(1.0, gt=0, description="CPUs reserved per Ray task (one class each).")
    torch_threads: Int | None = Field(None, ge=1, description="torch threads per task; default max(1, cpus_per_task).")

    @field_validator("sobol_designs")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"must be a power of two (Sobol sequences are balanced at 2^m points), got {value}")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> DiscoverSection:
        if self.min_images > self.max_images_per_class:
            raise ValueError(f"min_images ({self.min_images}) is above max_images_per_class "
                             f"({self.max_images_per_class})")
        return self


class ShapesWorldSection(_Section):
    """The synthetic shapes world used by the offline demo."""

    root: str = "data/shapes_world"
    n_images: Int = Field(2000, ge=10, le=1_000_000)
    seed: Int = 0
    size: Int = Field(64, ge=16, le=512)


class DataSection(_Section):
    """Probe images and their concept labels. Exactly one of folder, manifest, shapes_world."""

    folder: str | None = Field(None, description="ImageNet-layout folder ROOT/<class>/<file>; class = concept.")
    manifest: str | None = Field(None, description="Parquet/CSV/JSONL with uri, optional image_id and concepts.")
    shapes_world: ShapesWorldSection | None = None
    labels: str | None = Field(None, description="labels.parquet (image_id, concept); adds to labels from the source.")
    hierarchy: str | None = Field(None, description="Parquet, CSV or YAML of (concept, parent) edges.")
    concept_names: str | None = Field(
        None,
        description="Parquet or CSV (id, concept) renaming the labels' concepts, e.g. ImageNet class folders "
        "(wnids) to readable names: configs/imagenet_concept_names.csv.",
    )
    image_size: Int | None = Field(
        None, ge=8, le=4096, description="Side of the square model input; default: the model's."
    )
    resize: Literal["shorter_center_crop", "stretch"] = "shorter_center_crop"
    max_pixels: Int = Field(89_478_485, ge=1, description="Images with more pixels fail as decompression bombs.")
    limit: Int | None = Field(None, ge=1, description="Probe only the first N inputs (for quick looks).")

    @model_validator(mode="after")
    def _one_source(self) -> DataSection:
        given = [k for k in ("folder", "manifest", "shapes_world") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of data.folder, data.manifest, data.shapes_world"
                + (f" (got {', '.join(given)})" if given else " (got none)")
            )
        return self


class ModelSection(_Section):
    """Which model to probe, and where."""

    name: str = Field(..., description="Registry name (neuronscan models), torchvision/timm name, path, or pkg.mod:fn.")
    source: Literal["auto", "builtin", "torchvision", "timm", "open_clip", "torchscript", "export", "factory"] = "auto"
    weights: str | None = Field(
        None,
        description="torchvision weights enum name (e.g. IMAGENET1K_V2, DEFAULT), open_clip pretrained tag, "
        "or 'random'. Default: the registry's default.",
    )
    checkpoint: str | None = Field(None, description="Local state-dict file, loaded with weights_only=True.")
    mean: tuple[float, float, float] | None = Field(
        None, description="Per-channel (R, G, B) input mean on the 0..1 pixel scale, like torchvision's "
        "[0.485, 0.456, 0.406]; default: the model's own (its weights' transforms), else ImageNet's. Set it for "
        "a checkpoint, a .pt2 or a factory. mean and std are independent: either may be set alone.",
    )
    std: tuple[float, float, float] | None = Field(
        None, description="Per-channel (R, G, B) input std on the 0..1 pixel scale (each in (0, 1]), like "
        "torchvision's [0.229, 0.224, 0.225]; default as for mean. The input side is data.image_size.",
    )
    layers: list[str] = Field(..., min_length=1, description="Layer names or globs (neuronscan layers MODEL).")
    reduce: list[Literal["mean", "max", "cls", "patch_mean"]] = Field(
        default_factory=lambda: ["mean"],
        description="Per-image statistic(s): conv maps mean/max; ViT tokens cls/patch_mean.",
    )

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _normalisation(cls, value, info):
        """Three finite numbers on the 0..1 pixel scale (std > 0), with a hint for 0..255 values."""
        if value is None:
            return value
        key = info.field_name
        example = "[0.485, 0.456, 0.406]" if key == "mean" else "[0.229, 0.224, 0.225]"
        try:  # numbers, or strings of numbers (configs quoted them when YAML read 1e-3 as a string)
            if not isinstance(value, (list, tuple)) or len(value) != 3 or any(isinstance(v, bool) for v in value):
                raise TypeError
            numbers = [float(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(f"must be 3 numbers (R, G, B) on the 0..1 pixel scale, e.g. {example}") from None
        if not all(-float("inf") < v < float("inf") for v in numbers):  # NaN fails every comparison
            raise ValueError("must be finite numbers")
        if key == "std" and not all(v > 0 for v in numbers):
            raise ValueError("every std must be > 0 (it divides the pixels)")
        if any(v < 0 or v > 1 for v in numbers):
            hint = "; these look like 0..255 values: divide them by 255" if max(numbers) > 1 else ""
            raise ValueError(f"must be on the 0..1 pixel scale, e.g. {example}{hint}")
        return tuple(numbers)


class VocabularyLLMSection(_Section):
    """An LLM-proposed vocabulary (``clip.vocabulary: llm``) from an OpenAI-compatible chat endpoint."""

    url: str = Field(
        ..., description="Base URL of the OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (POST "
        "<url>/chat/completions); a URL ending in /chat/completions is used as is."
    )
    model: str = Field(..., min_length=1, description="The endpoint's model name.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (sent as a Bearer token); "
        "the key itself never goes in a config. Default: no key."
    )
    n_words: Int = Field(200, ge=1, le=20000, description="Words to ask for (at most this many are kept).")
    timeout_s: Float = Field(60.0, gt=0, le=600, description="Deadline of one request, connecting and reading.")
    retries: Int = Field(2, ge=0, le=5, description="Retries after a connection error, timeout, HTTP 429 or 5xx.")
    cache_dir: str | None = Field(
        None, description="Folder of cached answers (<sha256 of the request>.json); default "
        "$NEURONSCAN_CACHE_DIR/vocabulary_llm, else $XDG_CACHE_HOME/neuronscan/vocabulary_llm, else "
        "~/.cache/neuronscan/vocabulary_llm."
    )
    prompt: str | None = Field(
        None, min_length=1, description="The user message; {n_words} and {concepts} (the labelled concepts) are "
        "filled in. Default: a request for a JSON array of visual concepts."
    )
    temperature: Float = Field(0.0, ge=0, le=2)
    fallback: str = Field(
        "builtin:colours,textures,materials,shapes,parts,scenes",
        description="Vocabulary used, with a warning, when the endpoint is unreachable, errs, stalls or answers "
        "junk: builtin:NAME[,NAME...] or a text file.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials (user:password@); put the API key in the environment "
                             "variable named by api_key_env")
        return value.strip()

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        import re

        if value is not None and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) is None:
            raise ValueError("must be the name of an environment variable (letters, digits, _), not the key itself")
        return value

    @field_validator("fallback")
    @classmethod
    def _fallback_lists(cls, value: str) -> str:
        from neuronscan.clip._builtin import is_builtin_spec, parse_builtin_spec

        if not value.strip():
            raise ValueError("must be builtin:NAME[,NAME...] or a text file")
        if is_builtin_spec(value):
            parse_builtin_spec(value)
        return value


class ClipSection(_Section):
    """CLIP image embeddings in the probe pass, and label-free labels in the score stage."""

    model: str = Field(
        "ViT-B-32", description="open_clip architecture; neuronscan-tinyclip is the packaged shapes-world CLIP."
    )
    pretrained: str | None = Field(None, description="open_clip pretrained tag, e.g. 'openai'.")
    checkpoint: str | None = None
    vocabulary: str | list[str] | None = Field(
        None, description="Concept words for label-free labels: a list, a text file, builtin:NAME[,NAME...] "
        "(colours, textures, materials, shapes, parts, scenes, imagenet, english), or llm (proposed by the "
        "vocabulary_llm endpoint); default: the labelled concepts."
    )
    vocabulary_llm: VocabularyLLMSection | None = Field(
        None, description="The endpoint that proposes the words of vocabulary: llm."
    )
    method: Literal["correlation", "soft_wpmi"] = Field(
        "correlation",
        description="How a unit's whole-image CLIP label is chosen: correlation (the word whose CLIP similarity "
                    "correlates best with the unit's activations over all probe images; the default, the more "
                    "accurate on the demo's labelled units) or soft_wpmi (CLIP-Dissect's, from the unit's top_k "
                    "images).",
    )
    top_k: Int = Field(100, ge=1, description="Top images per unit for soft-WPMI.")
    precision: Literal["float32", "float64"] = Field(
        "float32",
        description="soft-WPMI arithmetic: float32 (about twice as fast; scores within ~2e-5 of float64 with a "
                    "few hundred concepts and ~3e-7 with 20,000, the same labels on 2,048 of 2,048 units there) or "
                    "float64 (the formula as written).",
    )

    @field_validator("vocabulary")
    @classmethod
    def _builtin_lists(cls, value: str | list[str] | None) -> str | list[str] | None:
        from neuronscan.clip._builtin import is_builtin_spec, parse_builtin_spec

        if is_builtin_spec(value):
            parse_builtin_spec(value)
        return value

    @model_validator(mode="after")
    def _llm_pairing(self) -> ClipSection:
        is_llm = isinstance(self.vocabulary, str) and self.vocabulary.strip() == "llm"
        if is_llm and self.vocabulary_llm is None:
            raise ValueError("vocabulary 'llm' needs vocabulary_llm: {url, model, ...}")
        if self.vocabulary_llm is not None and not is_llm:
            raise ValueError("vocabulary_llm is set but vocabulary is not 'llm'; set vocabulary: llm to use it, "
                             "or remove vocabulary_llm")
        return self


class ProbeSection(_Section):
    """The probe stage: decode on CPU, forward on GPU/CPU actors."""

    batch_size: Int = Field(128, ge=1, le=65536)
    num_actors: Int = Field(1, ge=1, description="Probe actors (one model copy each).")
    num_gpus: Float = Field(0.0, ge=0, description="GPUs per probe actor; 0 runs on CPU. Never assumed.")
    cpus_per_actor: Float = Field(0.5, gt=0, description="Fractional CPUs keep 2-core machines from deadlocking.")
    decode_cpus: Float = Field(0.5, gt=0, description="CPUs per decode task.")
    decode_tasks: Int | None = Field(
        None, ge=1,
        description="Cap on decode tasks in flight; default: no cap (Ray Data schedules them on free CPUs). "
                    "On CPU-only actors with decode_cpus == cpus_per_actor a cap equal to num_actors is raised by "
                    "one, so that decoding stays a separate stage.",
    )
    torch_threads: Int | None = Field(None, ge=1, description="torch intra-op threads per actor; default: all cores.")
    actor_threads: Int = Field(
        1, ge=1, le=8,
        description="Batches in flight per probe actor: with 2, one batch's host-to-device copy and result "
                    "transfer overlap the next batch's forward pass (the model itself runs one batch at a time).",
    )
    part_rows: Int = Field(
        32768, ge=1,
        description="Images per part file (per layer statistic): ImageNet-train's 1.28M images give ~40 parts. "
                    "A crash loses at most the parts being written; a resume redoes only those images.",
    )
    part_mb: Float = Field(
        512.0, gt=0,
        description="Cap on the float32 values of one part (all layer statistics together, MiB): wide layers get "
                    "fewer rows per part. Parts wait in Ray's object store until written (about 2x this).",
    )
    write_cpus: Float = Field(0.5, gt=0, description="CPUs per part-writing task (Parquet encoding and upload).")
    autocast: Bool = Field(True, description="bf16 autocast on GPU (ignored on CPU).")
    channels_last: Bool = True
    topk: Int = Field(16, ge=1, le=1000, description="Top images kept per unit (with argmax location).")
    clip: ClipSection | None = None


class DescribeSection(_Section):
    """Patch descriptions (``neuronscan describe RUN``; with ``enabled``, ``neuronscan run`` runs it after score):
    each unit described by CLIP embeddings of crops around the argmax location of its top images, scored against
    a vocabulary. See docs/algorithms.md ("Patch descriptions")."""

    enabled: Bool = Field(False, description="Run the stage in `neuronscan run` (after the score stage).")
    layers: list[str] | None = Field(
        None, min_length=1, description="Probed layers (conv4:mean, or a module name such as conv4 for all its "
        "statistics) or globs; default: every probed layer.")
    top_m: Int = Field(100, ge=1, le=1000, description="Top images cropped per unit (at most probe.topk; the "
                       "default is cut to it).")
    vocabulary: str | list[str] | None = Field(
        None, description="Words to describe units with, as clip.vocabulary (a list, a text file, "
        "builtin:NAME[,NAME...], llm); default: probe.clip.vocabulary, else the labelled concepts.")
    model: str | None = Field(
        None, description="open_clip architecture that embeds the crops; default: probe.clip.model (with its "
        "pretrained tag and checkpoint).")
    pretrained: str | None = Field(None, description="open_clip pretrained tag of describe.model.")
    checkpoint: str | None = Field(None, description="Local state dict of describe.model.")
    min_crop: Float = Field(
        0.25, gt=0, le=1, description="Smallest crop side as a fraction of the image side: a smaller receptive "
        "field (or ViT patch) is widened around its centre to it.")
    method: Literal["zscore", "mean_cosine", "soft_wpmi"] = Field(
        "zscore", description="Score of a word for a unit: the mean cosine of its crops with the word, standardised "
        "per word over the layer's crops (zscore); the plain mean cosine; or soft-WPMI over the crops.")
    top_n: Int = Field(5, ge=1, le=100, description="Words kept per unit (concepts, scores), best first.")
    phrase_words: Int = Field(3, ge=1, le=20, description="Words joined into a unit's phrase.")
    batch_size: Int = Field(64, ge=1, description="Images per actor call (each read and decoded once).")
    num_actors: Int = Field(1, ge=1, description="Ray actors (one CLIP copy each).")
    num_gpus: Float = Field(0.0, ge=0, description="GPUs per actor; 0 runs on CPU. Never assumed.")
    cpus_per_actor: Float = Field(0.5, gt=0, description="CPUs reserved per actor (fractions allowed).")
    torch_threads: Int | None = Field(None, ge=1, description="torch intra-op threads per actor; default: all cores.")

    @field_validator("vocabulary")
    @classmethod
    def _describe_vocabulary(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str) and value.strip().startswith("builtin:"):  # unknown list names fail here
            from neuronscan.clip._builtin import parse_builtin_spec

            parse_builtin_spec(value)
        return value

    @model_validator(mode="after")
    def _describe_weights(self) -> DescribeSection:
        if self.model is None and (self.pretrained is not None or self.checkpoint is not None):
            raise ValueError("describe.pretrained and describe.checkpoint need describe.model (the default, "
                             "probe.clip, brings its own weights)")
        if self.pretrained is not None and self.checkpoint is not None:
            raise ValueError("set describe.pretrained or describe.checkpoint, not both")
        return self


# Largest n_candidates for search 'exact': up to 256 atoms, ~1.7e7 formulas and ~45 MB of tables per unit.
_MAX_EXACT_CANDIDATES = 128


class CompositionalSection(_Section):
    """Compositional labels: the best AND/OR/NOT formula of concepts per unit."""

    enabled: Bool = True
    max_length: Int = Field(3, ge=1, le=5)
    beam_size: Int = Field(5, ge=1, le=50, description="Formulas kept per step of search: beam (ignored by exact).")
    n_candidates: Int = Field(
        32,
        ge=2,
        le=1000,
        description="Atoms tried per unit: the top n by AUC plus the top n in bounds (exact: <= 128).",
    )
    min_fraction: Float = Field(0.001, ge=0, le=1)
    max_fraction: Float = Field(0.5, ge=0, le=1)
    search: Literal["exact", "beam"] = Field(
        "exact",
        description=(
            "'exact': the optimum of the search space (max_length <= 3); "
            "'beam': INVERT's beam search (beam_size), a heuristic."
        ),
    )

    @model_validator(mode="after")
    def _exact_length(self) -> CompositionalSection:
        if self.search == "exact" and self.max_length > 3:
            raise ValueError(
                f"search 'exact' supports max_length <= 3 (got {self.max_length}); "
                "set search: beam for longer formulas"
            )
        if self.search == "exact" and self.n_candidates > _MAX_EXACT_CANDIDATES:
            # |A| <= 2 n_candidates atoms: the space grows as |A|^3 per unit, the triple tables as K^3.
            raise ValueError(
                f"search 'exact' supports n_candidates <= {_MAX_EXACT_CANDIDATES} (got {self.n_candidates}); "
                "set search: beam for larger candidate sets"
            )
        if self.min_fraction > self.max_fraction:
            raise ValueError(
                f"min_fraction ({self.min_fraction}) is above max_fraction ({self.max_fraction}): "
                "no formula could have its support in bounds"
            )
        return self


class SimulationSection(_Section):
    """Simulation scores: each unit's explanations predict its activations on held-out images."""

    enabled: Bool = True
    holdout: Float = Field(0.2, gt=0, lt=1, description="Fraction of images held out (by a hash of the image id).")
    seed: Int = Field(0, description="Seed of the held-out split.")
    max_terms: Int = Field(5, ge=1, le=50, description="Most concepts in a unit's linear explanation.")
    n_candidates: Int = Field(32, ge=1, le=1000, description="Concepts a linear explanation chooses from "
                              "(highest absolute correlation on the fit images).")
    min_gain: Float = Field(0.005, ge=0, le=1, description="R² a term must add to the linear explanation.")


class ScoreSection(_Section):
    """The score stage: AUC, AUPRC, p- and q-values, permutation tests, labels."""

    alpha: Float = Field(0.05, gt=0, lt=1, description="FDR level for 'significant'.")
    units_per_shard: Int = Field(64, ge=1, description="Units per Ray scoring task (memory ~ N x shard x 8 bytes).")
    cpus_per_task: Float = Field(1.0, gt=0)
    executor: Literal["ray", "local"] = Field(
        "ray", description="Where the shards are scored: as Ray tasks (an embedded Ray, or the cluster joined), or "
        "'local': on a thread pool in this process, with no Ray started (one machine; on 2 cores it saves Ray's "
        "~9 CPU-s of start-up: benchmarks/RESULTS.md). The numbers are the same either way.",
    )
    local_threads: Int | None = Field(
        None, ge=1, description="Shards scored at once with executor 'local'; default: the CPUs this process may use."
    )
    keep_worker_heap: Bool = Field(
        True, description="Score workers keep the memory a shard freed for their next shard (glibc only: large "
        "arrays come from the heap, which is never trimmed) instead of returning it to the system and faulting "
        "it in again, page by page; a worker's RSS then stays at its largest shard's.",
    )
    n_perm: Int = Field(1000, ge=0, description="Permutations per tested pair; 0 turns permutation tests off.")
    perm_top: Int = Field(
        3, ge=0, description="Permutation-test each unit's top concepts (plus every pair with p <= alpha)."
    )
    perm_max_pairs: Int = Field(200_000, ge=0, description="Cap on permutation-tested pairs per run.")
    seed: Int = 0
    min_auc: Float = Field(
        0.75, ge=0.5, le=1,
        description="AUC a significant concept needs to be aligned: the bar of the multimodal and spurious "
        "flags and of the concepts a diff reports as gained or lost.",
    )
    rank_by: Literal["auprc", "correlation", "cosine", "f1", "iou", "auc"] = Field(
        "correlation", description="The metric that chooses each unit's best_concept (AUC is still reported). "
        "Correlation passes both of `neuronscan sanity`'s checks at every frequency; AUC fails the "
        "missing-labels check on rare concepts.",
    )
    top_quantile: Float = Field(
        0.005, gt=0, le=1, description="Top fraction of a unit's images that F1 and IoU treat as 'active'."
    )
    simulation: SimulationSection = Field(default_factory=SimulationSection)
    compositional: CompositionalSection = Field(default_factory=CompositionalSection)
    spurious_concepts: list[str] = Field(
        default_factory=list, description="Concepts flagged when a unit aligns to them (q <= alpha, AUC >= min_auc)."
    )


class DiffSection(_Section):
    """Thresholds for `neuronscan diff` to exit non-zero."""

    max_changed_labels: Int | None = Field(None, ge=0)
    min_abs_delta_auc: Float = Field(0.1, ge=0, le=1)
    fail_on_spurious: Bool = True


class SpatialSection(_Section):
    """HINT's spatial method (``hierarchy.spatial``): saliency-defined responsible regions of each concept, a
    position-level concept classifier, its Shapley channel ranking, and localisation IoU against ground-truth
    boxes. With ``enabled``, ``neuronscan run`` runs it after the hierarchy stage (``neuronscan hierarchy RUN
    --spatial`` on its own); ``pipelines.run_spatial`` takes the section directly. See docs/algorithms.md
    ("Spatial concepts")."""

    enabled: Bool = Field(False, description="Run the method in `neuronscan run` (after the hierarchy stage).")
    layers: list[str] | None = Field(
        None, min_length=1, description="Conv layers (exact names); default: the run's model.layers.")
    concepts: list[str] | None = Field(
        None, min_length=1, description="Concepts to analyse; default: every concept with a positive ok image.")
    per_leaf: Int = Field(20, ge=1, description="Images sampled per leaf class under the concept (HINT: 20).")
    max_images: Int = Field(233, ge=1, description="Images per concept at most (HINT: 233).")
    eval_images: Int = Field(
        50, ge=0, description="Held-out images per concept (with boxes) for localisation; 0 turns it off.")
    seed: Int = Field(0, ge=0, description="Seeds the image samples, position subsampling and the SGD fit.")
    saliency: Literal["guided_backprop", "vanilla", "grad_x_input", "smoothgrad", "integrated_gradients"] = Field(
        "guided_backprop", description="Saliency method (guided_backprop needs nn.ReLU modules).")
    saliency_at: Literal["input", "layer"] = Field(
        "input", description="Gradients w.r.t. the model input (averaged to the grid) or the layer's map (HINT).")
    smoothgrad_samples: Int = Field(25, ge=1)
    smoothgrad_sigma: Float = Field(0.15, gt=0, description="Noise std as a fraction of each input's value range.")
    ig_steps: Int = Field(25, ge=1, description="Integrated-gradients steps (midpoint rule, zero baseline).")
    threshold: Float = Field(0.5, gt=0, lt=1, description="Normalised saliency above it is a responsible region.")
    norm_quantile: Float = Field(0.99, gt=0, le=1, description="Saliency is scaled so this quantile maps to 1.")
    max_positions: Int = Field(20_000, ge=10, description="Positions per class at most for the classifier.")
    val_fraction: Float = Field(0.2, ge=0, lt=1, description="Positions held out to report the classifier's accuracy.")
    sgd_alpha: Float = Field(0.01, gt=0, description="SGDClassifier alpha (HINT: 0.01).")
    sgd_max_iter: Int = Field(1000, ge=1)
    loc_threshold: Float = Field(0.5, gt=0, lt=1, description="Classifier probability that marks the concept.")
    loc_box: Literal["largest_component", "all"] = Field(
        "largest_component", description="Box of the largest 8-connected component, or of every marked pixel.")
    output_concepts: Literal["auto", "none"] | list[str] = Field(
        "auto", description="Names of the model's outputs, in order ('auto': shapesnet's heads, torchvision "
        "categories); a concept named there is saliency'd through its own logit.")
    boxes: str | None = Field(
        None, description="Parquet of ground-truth boxes (image_id, concept, x0, y0, x1, y1 [, width, height]) in "
        "the run's concept names; default: a shapes world's boxes.parquet. Without boxes no localisation.")
    batch_size: Int = Field(64, ge=1, description="Images per forward/backward pass.")
    num_actors: Int = Field(1, ge=1, description="Ray actors (one model copy each); concepts are spread over them.")
    num_gpus: Float = Field(0.0, ge=0, description="GPUs per actor; 0 runs on CPU. Never assumed.")
    cpus_per_actor: Float = Field(1.0, gt=0, description="CPUs reserved per actor (fractions allowed).")
    torch_threads: Int | None = Field(None, ge=1, description="torch intra-op threads per actor; default: all cores.")


class HierarchySection(_Section):
    """The hierarchy stage: collaborative units per concept at every level, and multimodal units per level.

    ``neuronscan hierarchy RUN`` runs it on a scored run; with ``enabled``, ``neuronscan run`` runs it after
    the score stage. See docs/algorithms.md ("Collaborative units"). ``spatial`` is HINT's spatial method, with
    its own switch (``spatial.enabled``: ``neuronscan run`` runs it after this stage, or after score when this
    one is off).
    """

    enabled: Bool = Field(False, description="Run the stage after score in `neuronscan run`.")
    layers: list[str] | None = Field(
        None, description="Layers (with their statistic, e.g. conv4:mean) or globs; default: every probed layer."
    )
    min_positives: Int = Field(
        20, ge=4, description="Concepts with fewer positives (or negatives) among the probed images get no probe."
    )
    max_positives: Int = Field(2000, ge=4, description="Positives drawn per concept (at random, by seed).")
    max_negatives: Int = Field(2000, ge=4, description="Negatives drawn per concept (at random, by seed).")
    holdout: Float = Field(
        0.3, gt=0, lt=1, description="Fraction of the drawn positives and of the negatives held out (stratified)."
    )
    n_candidates: Int = Field(
        32, ge=1, le=512, description="Units tried per concept: the top n by AUC on the training rows."
    )
    max_units: Int = Field(8, ge=1, le=64, description="Largest collaborative set.")
    target_auc: Float = Field(
        0.95, gt=0.5, le=1,
        description="Stop adding units once the held-out AUC reaches min(target_auc, 0.5 + target_fraction "
        "* (AUC of the probe on all candidates - 0.5)).",
    )
    target_fraction: Float = Field(0.95, gt=0, le=1, description="See target_auc.")
    l2: Float = Field(0.01, gt=0, description="L2 penalty of the probe (standardised units, class weights sum 1).")
    seed: Int = Field(0, description="Seeds each concept's draw and split (with the concept's name).")
    cpus_per_task: Float = Field(0.5, gt=0, description="CPUs per Ray task.")
    concepts_per_task: Int = Field(16, ge=1, description="Concepts of one layer per Ray task.")
    multimodal_lca_depth: Int = Field(
        0, ge=-1,
        description="A unit is multimodal when aligned with two concepts (neither an ancestor of the other) whose "
        "lowest common ancestor has depth <= this: 0 = they meet only at a root or nowhere; -1 = nowhere "
        "(the score stage's flag).",
    )
    multimodal_max_pairs: Int = Field(
        20, ge=1, description="Pairs recorded per multimodal unit (those with the highest AUCs); all are counted."
    )
    spatial: SpatialSection = Field(
        default_factory=SpatialSection, description="HINT's spatial method (responsible regions, channel "
        "ranking, localisation IoU); off unless spatial.enabled."
    )

    @model_validator(mode="after")
    def _sizes(self) -> HierarchySection:
        if self.max_units > self.n_candidates:
            raise ValueError(f"max_units ({self.max_units}) is above n_candidates ({self.n_candidates})")
        if self.min_positives > min(self.max_positives, self.max_negatives):
            raise ValueError(
                f"min_positives ({self.min_positives}) is above max_positives/max_negatives "
                f"({self.max_positives}/{self.max_negatives})"
            )
        return self


class ExplainSparsitySection(_Section):
    """A sparse autoencoder's sparsity: TopK (the k largest pre-activations per image, AuxK for dead components)
    or JumpReLU (a learnt threshold per component, an L0 penalty, a straight-through estimator)."""

    activation: Literal["topk", "jumprelu"] = Field("topk", description="TopK or JumpReLU components.")
    k: Int = Field(8, ge=1, description="TopK: components kept per image.")
    aux_k: Int | None = Field(
        None, ge=1, description="TopK: dead components that reconstruct the residual in the AuxK loss; default 2k.")
    aux_coefficient: Float = Field(1 / 32, ge=0, description="TopK: weight of the AuxK loss (0 turns it off).")
    dead_after: Int | None = Field(
        None, ge=1, description="TopK: a component is dead for AuxK after this many images without firing; "
        "default one epoch's images.")
    threshold: Float = Field(
        0.5, gt=0, description="JumpReLU: initial threshold (inputs are normalised to unit mean square per unit).")
    l0_coefficient: Float = Field(0.01, ge=0, description="JumpReLU: weight of the L0 penalty.")
    bandwidth: Float = Field(0.1, gt=0, description="JumpReLU: width of the straight-through estimator's kernel.")


class ExplainPartSection(_Section):
    """Zhang et al.'s explainer network on a conv layer's feature maps: interpretable encoder filters (part
    templates), a decoder reconstructing the features, distillation of the model's outputs."""

    reduce: Literal["max", "mean"] = Field(
        "max", description="Per-image statistic of each component's map written to the derived layer.")
    kernel_size: Int = Field(3, ge=1, le=7, description="The encoder's kernel (odd).")
    hidden: Float = Field(1.0, gt=0, description="The decoder's hidden channels, as a multiple of the layer's.")
    ordinary_width: Float = Field(
        0.0, ge=0, description="Ordinary (unconstrained, not audited) encoder filters, as a multiple of the "
        "layer's channels: Zhang's second track, for what no part explains.")
    part_weight: Float = Field(1.0, ge=0, description="Weight of the part-template loss (-MI per filter).")
    distill_weight: Float = Field(1.0, ge=0, description="Weight of the distillation loss (target output/both).")
    reconstruction_weight: Float = Field(1.0, ge=0, description="Weight of the feature reconstruction loss.")
    beta: Float = Field(4.0, gt=0, description="Fall-off of the templates: 1 - beta * L1 distance / side.")
    tau: Float | None = Field(
        None, gt=0, description="Template height; default 0.5 / (h * w) as Zhang et al. (maps are normalised to "
        "mean 1 per filter first).")
    alpha: Float | None = Field(
        None, gt=0, lt=1, description="Prior of the positive templates; default n^2 / (1 + n^2).")
    mask: Bool = Field(True, description="Mask each filter's map by the template of its own peak before decoding.")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 != 1:
            raise ValueError(f"must be odd, got {value}")
        return value


_EXPLAIN_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


class ExplainerSection(_Section):
    """One explainer of one layer (`neuronscan explain-train`); its components become the derived layer
    ``<layer>@<name>`` (a part explainer's ``<layer>:<reduce>@<name>``), scored and reported like units."""

    layer: str | None = Field(
        None, description="sae: a probed layer statistic (conv4:mean); part: a conv module (conv3) whose feature "
        "maps the model computes again on the run's images.")
    family: Literal["sae", "part"] = Field(
        "sae", description="sae: sparse autoencoder on the probe's per-image statistic; part: Zhang's explainer.")
    name: str | None = Field(None, description="Names the derived layer <layer>@<name>; default: the family.")
    width: Float = Field(2.0, gt=0, le=64, description="Components as a multiple of the layer's units.")
    sparsity: ExplainSparsitySection = Field(default_factory=ExplainSparsitySection)
    part: ExplainPartSection = Field(default_factory=ExplainPartSection)
    target: Literal["features", "output", "both"] | None = Field(
        None, description="What the decoder is trained to give back: the layer's features, the model's outputs "
        "computed from the reconstruction (distillation), or both; default: features (sae), both (part). sae "
        "takes features only.")
    epochs: Int = Field(20, ge=1, description="Passes over the training images; raising it resumes training.")
    batch_size: Int = Field(128, ge=1, description="Images per step, over all workers.")
    lr: Float = Field(1e-3, gt=0, description="Adam's learning rate.")
    seed: Int = Field(0, ge=0, description="Seeds the weights, the image order of every epoch and the subsample.")
    max_images: Int | None = Field(
        None, ge=2, description="Train on at most this many of the run's ok images (seeded); default all. "
        "Components are written for every image.")
    num_workers: Int = Field(1, ge=1, description="Ray Train workers (data-parallel).")
    use_gpu: Bool = Field(False, description="One GPU per worker; never assumed.")
    cpus_per_worker: Float = Field(1.0, gt=0, description="CPUs reserved per worker (fractions allowed).")
    torch_threads: Int | None = Field(None, ge=1, description="torch intra-op threads per worker; default: its CPUs.")
    max_failures: Int = Field(1, ge=0, description="Worker-group restarts after a failure (each resumes from the "
                              "last checkpoint).")
    accuracy: Bool = Field(True, description="Measure the model's accuracy with the reconstruction substituted "
                           "(a pass of the model over the run's images; needs known output concepts).")
    stability_min_images: Int = Field(
        10, ge=2, description="Images a component must fire on for its location instability to count.")

    @field_validator("name")
    @classmethod
    def _file_safe(cls, value: str | None) -> str | None:
        import re

        if value is not None and not re.fullmatch(_EXPLAIN_NAME, value):
            raise ValueError(f"must be letters, digits, '_', '.', '-' (starting with a letter or digit), got {value!r}")
        return value

    @model_validator(mode="after")
    def _family_target(self) -> ExplainerSection:
        if self.family == "sae" and self.target not in (None, "features"):
            raise ValueError("family sae reconstructs the layer's features only (target: features); the model's "
                             "outputs need its feature maps: use family part")
        if self.layer is not None and "@" in self.layer:
            raise ValueError(f"layer {self.layer!r} is a derived layer; explain a probed one")
        return self

    @property
    def resolved_name(self) -> str:
        return self.name or self.family

    @property
    def resolved_target(self) -> str:
        return self.target or ("features" if self.family == "sae" else "both")


class ExplainSection(ExplainerSection):
    """Explainers and sparse autoencoders: ``neuronscan explain-train CONFIG`` trains them on a probed run; with
    ``enabled``, ``neuronscan run`` trains them after the probe and before score. The keys of this section are
    one explainer; ``also`` lists more (each with the same keys). See docs/algorithms.md ("Explainers")."""

    enabled: Bool = Field(False, description="Train the explainers in `neuronscan run` (after the probe).")
    also: list[ExplainerSection] = Field(
        default_factory=list, description="Further explainers, each with the keys of this section (its own "
        "defaults, nothing inherited).")

    @model_validator(mode="after")
    def _layers_given(self) -> ExplainSection:
        missing = [f"also[{i}].layer" for i, e in enumerate(self.also) if e.layer is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} is required")
        if self.enabled and not self.explainers():
            raise ValueError("enabled needs an explainer: set layer (and family), or list them under also")
        names = [(e.layer, e.resolved_name, e.part.reduce if e.family == "part" else None) for e in self.explainers()]
        if len(set(names)) != len(names):
            raise ValueError(f"two explainers have the same layer and name: {names}; give each a name")
        return self

    def explainers(self) -> list[ExplainerSection]:
        """This section's explainer (when it has a layer) and those of ``also``, in that order."""
        first = ExplainerSection.model_validate(self.model_dump(exclude={"enabled", "also"}))
        return ([first] if first.layer is not None else []) + list(self.also)


class RaySection(_Section):
    address: str | None = Field(None, description="Ray cluster address; default: RAY_ADDRESS or a local Ray.")
    num_cpus: Int | None = Field(None, ge=1, description="CPUs of the local Ray; default: the machine's.")
    object_store_memory: Int | None = Field(None, ge=78_643_200, description="Bytes for the local object store.")


class RunConfig(_Section):
    """A whole audit: ``neuronscan run CONFIG``."""

    discover: DiscoverSection = Field(default_factory=DiscoverSection)
    run: RunSection = Field(default_factory=RunSection)
    explain: ExplainSection = Field(default_factory=ExplainSection)
    data: DataSection
    model: ModelSection
    probe: ProbeSection = Field(default_factory=ProbeSection)
    score: ScoreSection = Field(default_factory=ScoreSection)
    diff: DiffSection = Field(default_factory=DiffSection)
    hierarchy: HierarchySection = Field(default_factory=HierarchySection)
    ray: RaySection = Field(default_factory=RaySection)
    describe: DescribeSection = Field(default_factory=DescribeSection)

    @model_validator(mode="after")
    def _describe_needs(self) -> RunConfig:
        """describe.top_m within probe.topk; an enabled describe stage has a CLIP model; llm words need an endpoint."""
        d = self.describe
        # Only an enabled stage (a recorded config, run.json, sets every field, the disabled section's too), and not
        # the default, which the stage cuts to probe.topk (so a recorded default reloads).
        default = type(d).model_fields["top_m"].default
        if d.enabled and "top_m" in d.model_fields_set and d.top_m != default and d.top_m > self.probe.topk:
            raise ValueError(f"describe.top_m ({d.top_m}) is above probe.topk ({self.probe.topk}): the probe keeps "
                             "only probe.topk top images per unit")
        if d.enabled and d.model is None and self.probe.clip is None:
            raise ValueError("describe.enabled needs a CLIP model: set describe.model (e.g. neuronscan-tinyclip) "
                             "or probe.clip")
        is_llm = isinstance(d.vocabulary, str) and d.vocabulary.strip() == "llm"
        if is_llm and getattr(self.probe.clip, "vocabulary_llm", None) is None:
            raise ValueError("describe.vocabulary 'llm' uses probe.clip.vocabulary_llm, which is not set")
        return self
