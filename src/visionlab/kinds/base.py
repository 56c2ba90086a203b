"""What a task kind is: the one object every surface (trainer, evaluate, predict, serve, report,
data doctor, demo) asks how to index, batch, run, score and show a task of that kind.

This module is torch-free; a kind's heavy parts (its runner, the model step of the predictor)
are imported inside its methods, so ``visionlab tasks`` and ``--help`` stay fast.
"""

from __future__ import annotations

import base64
import os
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from visionlab.data.preprocessing import Preprocessing
from visionlab.errors import VisionlabError

__all__ = ["Kind", "KindOptions", "Output", "LoadedModel", "ACTIVATIONS", "Prediction", "EvaluationReport", "DEFAULT_TOP_K", "check_top_k",
           "temperature_of", "free_stem", "save_output", "unknown_mode", "unknown_threshold", "SIMILARITY"]

#: How an output's scores become probabilities: one class per image or pixel (softmax over the
#: class axis), each class on its own (sigmoid: several labels at once), or none (a number).
ACTIVATIONS = ("softmax", "sigmoid", "none")


@dataclass(frozen=True)
class Output:
    """One output of a kind's network, as export writes it into the .onnx metadata and the
    torch-free runtime reads it: its name, what it scores (``per``: 'image' = N x C, 'pixel' =
    N x C x H x W, class axis 1) and the activation that turns it into probabilities."""

    name: str = "logits"
    per: str = "image"
    activation: str = "softmax"
    meaning: str = "logits over the classes, per image"

    def __post_init__(self) -> None:
        if self.per not in ("image", "pixel") or self.activation not in ACTIVATIONS:
            raise ValueError(f"output {self.name!r}: per must be image or pixel, activation one of {', '.join(ACTIVATIONS)}")

    @property
    def dense(self) -> bool:
        """Whether it scores every pixel (spatial axes of any size; views are mapped back before averaging)."""
        return self.per == "pixel"

    def decisions(self, scores: Any) -> Any:
        """What a surface decides from raw scores (a numpy array, class axis 1): the top class for
        softmax (and for a plain number, whose one channel makes it always 0), each label's yes/no
        at probability 0.5 for sigmoid. Export's parity check compares these."""
        return scores > 0 if self.activation == "sigmoid" else scores.argmax(1)

    def line(self) -> str:
        """Its one-line description for the .onnx metadata's ``output`` field."""
        before = f"before {self.activation}" if self.activation != "none" else "no activation"
        return f"{self.name}: float32, {before}, class axis 1" + (" (N x C x H x W)" if self.dense else "")

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "per": self.per, "activation": self.activation, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Output":
        return cls(str(data["name"]), str(data["per"]), str(data["activation"]), str(data.get("meaning", "")))


@dataclass
class KindOptions:
    """The config keys of one kind of task, beside :class:`visionlab.config.Config`'s common ones.

    A kind declares a dataclass subclass as :attr:`Kind.options`; each field is one key, made with
    :func:`visionlab.config.setting` (default, one-line meaning, choices, and ``instead``: advice
    keyed by the kind it is for, shown when the key is set on a task of that kind). A field may not
    reuse a common key's name (``register_kind`` refuses it). Recipes write the keys flat (``tile_size: 256``); the config routes them here by
    name, coerces them to the fields' types and refuses unknown ones. No fields by default."""

    def checks(self) -> list[tuple[bool, str]]:
        """(holds, what must hold) range checks of the values; any that fails is an invalid config."""
        return []


#: Classes listed per image when no ``top_k`` is given (predict, serve, the runtime, evaluation rows).
DEFAULT_TOP_K = 3


def check_top_k(top_k: Any, name: str = "top_k") -> None:
    """``top_k`` is an integer >= 1 (every prediction path takes it); else one line that says so,
    naming it as the caller's user knows it (``name``: top_k, --top-k)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise VisionlabError(f"{name} must be an integer >= 1, got {top_k!r}.",
                             f"Pass e.g. {DEFAULT_TOP_K} (a value above the number of classes lists them all).")


def temperature_of(calibration: Mapping[str, Any] | None, use: bool = True) -> float:
    """What a model's logits are divided by before softmax: the temperature of its fitted
    ``calibration`` (a checkpoint's or an .onnx file's ``calibration`` entry, see
    :meth:`Kind.calibrate`); 1 (the raw softmax) without one, or when ``use`` is off (--no-calibration).
    A temperature that is not a number in :data:`TEMPERATURES` is a damaged file, said in one line."""
    if not use or not calibration:
        return 1.0
    value = calibration.get("temperature", 1.0) if isinstance(calibration, Mapping) else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and TEMPERATURES[0] <= value <= TEMPERATURES[1]
    if not ok:
        raise VisionlabError(f"the model's calibration is damaged (temperature {value!r}, not a number in "
                             f"{TEMPERATURES[0]:g}..{TEMPERATURES[1]:g}).",
                             "Export or train the model again, or pass --no-calibration for the raw softmax.")
    return float(value)


#: The temperatures a fitted calibration may hold (the bounds of its fit).
TEMPERATURES = (0.05, 20.0)

#: What to do about a damaged unknown detector (a checkpoint's, or an exported file's).
DAMAGED_DETECTOR_HINT = ("Fit it again (visionlab calibrate CHECKPOINT.pt, then export again for an exported file), "
                         "or pass --unknown off.")

#: What an unknown detector's score (a cosine similarity, or Mahalanobis' 1 / (1 + d2 / D)) and so its threshold may be.
SIMILARITY = (-1.0, 1.0)


def _similarity(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and SIMILARITY[0] <= value <= SIMILARITY[1]


def unknown_mode(value: Any, name: str = "--unknown") -> str | float:
    """``--unknown`` as given: 'off' (every photo gets a class), 'auto' (the model's own threshold)
    or a threshold in :data:`SIMILARITY`; anything else is one line that says what to pass."""
    text = str(value).strip().lower()
    if text in ("off", "auto"):
        return text
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not _similarity(number):
        raise VisionlabError(f"{name} must be off, auto or a threshold from {SIMILARITY[0]:g} to {SIMILARITY[1]:g}, got {value!r}.",
                             f"Pass e.g. {name} auto (the model's threshold, fitted on its validation split).")
    return number


def unknown_threshold(detector: Mapping[str, Any] | None, mode: str | float = "auto") -> float | None:
    """The score below which a photo is 'unknown': the fitted ``detector``'s threshold (a checkpoint's
    or an .onnx file's ``unknown`` entry, see :meth:`Kind.fit_unknown`) for 'auto', the number given,
    None for 'off' or a model without a detector. A saved threshold that is not a number in
    :data:`SIMILARITY` is a damaged file, said in one line."""
    mode = unknown_mode(mode)
    if mode == "off" or not detector:
        return None
    if mode != "auto":
        return float(mode)
    value = detector.get("threshold") if isinstance(detector, Mapping) else None
    if not _similarity(value):
        raise VisionlabError(f"the model's unknown detector is damaged (threshold {value!r}, not a number in "
                             f"{SIMILARITY[0]:g}..{SIMILARITY[1]:g}).",
                             DAMAGED_DETECTOR_HINT)
    return float(value)


@dataclass(frozen=True)
class LoadedModel:
    """What a kind's predict step (:meth:`Kind.predict_arrays`) is given of a loaded checkpoint: the
    network, the normalisation of a uint8 NCHW batch and where it runs, the classes, the saved
    preprocessing record, the mixed-precision context (``autocast()``), the test-time augmentation
    mode, the memory format, the temperature a calibrated classifier divides its logits by and the
    layer its explanations weigh (the model zoo's ``cam_layer``; '' for none named)."""

    model: Any
    normalize: Any
    device: Any
    classes: tuple[str, ...]
    preprocessing: Any  # visionlab.data.preprocessing.Preprocessing
    autocast: Any  # () -> a context manager
    tta: str = "none"
    channels_last: bool = False
    temperature: float = 1.0
    cam_layer: str = ""
    #: (logits, score) of a normalised batch (:meth:`Kind.unknown_scorer`) and the threshold below
    #: which a photo is unknown; None when no detector applies (--unknown off, or a model without one).
    scorer: Any = None
    threshold: float | None = None


@dataclass
class Prediction:
    """One image's result; each kind has its own subclass with the fields of its answer.

    ``label`` and ``confidence`` are the answer in a word and a number (a class and its
    probability, a mask's dominant class and its share, ...). ``error`` is set when the file
    could not be read, ``skipped`` says why an entry was not predicted at all (not an image, a
    broken link, a directory...)."""

    source: str
    label: str | None = None
    confidence: float | None = None
    error: str | None = None
    skipped: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # files written for it (a mask...): column -> path
    explanation: Any = field(default=None, repr=False, compare=False)  # why it was answered so: an RGB uint8 overlay (Kind.explain), when asked

    def extra(self) -> dict[str, Any]:
        """The kind's own JSON-ready fields after the common ones (top_k, class_shares, value, ...)."""
        return {}

    def flat_extra(self) -> dict[str, Any]:
        """:meth:`extra` as flat CSV columns (nested fields spread over several)."""
        return self.extra()

    def _common(self) -> dict[str, Any]:
        return {"path": self.source, "label": self.label, "confidence": self.confidence, "error": self.error, "skipped": self.skipped}

    def to_dict(self) -> dict[str, Any]:
        """One row of ``visionlab predict --out x.json``: path, label, confidence, error, skipped, the
        kind's fields, then the files written for it."""
        return {**self._common(), **self.extra(), **self.files}

    def to_json(self, image: Any = None) -> dict[str, Any]:
        """JSON-ready result for an HTTP answer: the fields this result has (``image``, the decoded
        photo, is read only by results that draw on it)."""
        return {k: v for k, v in self.to_dict().items() if k != "path" and v is not None}

    def csv_row(self) -> dict[str, Any]:
        """One flat row of ``visionlab predict --out x.csv``."""
        return {**self._common(), **self.files, **self.flat_extra()}

    def detail(self) -> str:
        """The terminal table's detail cell (top-k, class shares, ...)."""
        return ""

    def cells(self) -> tuple[str, str, str]:
        """The terminal table's (label, confidence, detail) cells of a predicted image."""
        return self.label or "", f"{self.confidence:.3f}" if self.confidence is not None else "", self.detail()

    def write_explanation(self, overlay: Any, folder: Path, taken: set[str]) -> None:
        """Write ``overlay`` (an RGB uint8 array: :meth:`Kind.explain`) as <stem>_why.png into ``folder``
        and note it in :attr:`files` as ``explanation``; stems are picked as :meth:`write_files` picks
        them (a stem in ``taken`` gets -2, -3, ...), so with a ``taken`` of its own the same image gets the same stem.
        Written whole or not at all (a hidden .part file renamed): a stop mid-write leaves no truncated PNG."""
        from PIL import Image

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{free_stem(self.source, taken, folder, ('_why.png',))}_why.png"
        save_output(Image.fromarray(overlay), path, "explanation")
        self.files = {**self.files, "explanation": str(path)}

    def with_top_k(self, k: int) -> "Prediction":
        """This result listing at most ``k`` classes (itself for kinds without a ranking)."""
        return self

    def write_files(self, folder: Path, taken: set[str]) -> None:
        """Write the files this result has beside the predictions (masks...) into ``folder``, and
        note them in :attr:`files`; ``taken`` holds the file stems used so far. None by default."""


def save_output(image: Any, path: Path, what: str) -> None:
    """``image`` as the PNG ``path``, marked as visionlab's (:func:`visionlab.data.io.output_pnginfo`),
    written whole or not at all (a hidden .part file renamed): a stop mid-write leaves no truncated PNG."""
    from visionlab.data.io import output_pnginfo

    part = path.with_name(f".{path.name}.part")
    try:
        image.save(part, format="PNG", pnginfo=output_pnginfo(what))
        os.replace(part, path)
    except BaseException:  # Ctrl-C, SIGTERM, a full disk: nothing half-written is left
        part.unlink(missing_ok=True)
        raise


def free_stem(source: str, taken: set[str], folder: Path | None = None, suffixes: tuple[str, ...] = ()) -> str:
    """The file stem of ``source`` for the files written beside the predictions, made unique among
    ``taken`` (same file name from another folder: -2, -3, ...), and added to it. With ``folder``,
    a stem is also passed over while any ``<stem><suffix>`` there is a file (or link) that visionlab
    did not write (:func:`visionlab.data.io.is_visionlab_output`): a user's file is never replaced."""
    from visionlab.data.io import is_visionlab_output

    def occupied(stem: str) -> bool:
        return folder is not None and any(os.path.lexists(folder / f"{stem}{s}") and not is_visionlab_output(folder / f"{stem}{s}")
                                          for s in suffixes)

    stem = base = Path(source).stem
    n = 1
    while stem in taken or occupied(stem):
        n += 1
        stem = f"{base}-{n}"
    taken.add(stem)
    return stem


def image_base64(image: Any, fmt: str, **options: Any) -> str:
    """A PIL image encoded as ``fmt`` (PNG, JPEG) in base64, for JSON answers."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class EvaluationReport:
    """What ``visionlab evaluate`` measured: the metrics and per-class detail of one split, the
    facts of the run, one row per image (worth-a-look first) and the example images."""

    task: str
    kind: str
    checkpoint: str
    data: str
    split: str
    synthetic: bool
    images: int
    seconds: float
    tta: str
    classes: list[str]
    detail: dict[str, Any]  # the kind's report: metrics, per_class, confusion_matrix, ...
    files: list[dict[str, Any]] | None = None
    files_note: str = ""
    examples: list[dict[str, Any]] | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        return self.detail.get("metrics", {})

    def to_dict(self) -> dict[str, Any]:
        """metrics.json: the kind's report and the facts of the run."""
        return {**self.detail, "task": self.task, "checkpoint": self.checkpoint, "data": self.data, "split": self.split,
                "synthetic": self.synthetic, "images": self.images, "seconds": round(self.seconds, 2), "tta": self.tta}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


class Kind:
    """A task kind. Subclasses set the class attributes and implement the methods that raise here.

    Direction of metrics: :meth:`higher_is_better` (the trainer never guesses it from a name).
    """

    name: ClassVar[str] = ""
    #: The config keys only this kind reads (a :class:`KindOptions` dataclass; none by default).
    options: ClassVar[type[KindOptions]] = KindOptions
    #: What the network returns (export writes it into the .onnx metadata, the runtime reads it).
    outputs: ClassVar[tuple[Output, ...]] = (Output(),)
    #: The kind's own keys of its preprocessing record (a plugin's ``extra``: a label threshold) and the
    #: type each holds; a saved record without one, or with another type, is damaged (:meth:`saved_preprocessing`).
    preprocessing_keys: ClassVar[Mapping[str, type]] = {}
    #: The validation metric that selects best.pt.
    primary: ClassVar[str] = ""
    #: The test-time augmentation modes its evaluation and prediction carry out (``tta``).
    tta_modes: ClassVar[tuple[str, ...]] = ("none",)
    #: The test metrics the closing line of training names (empty: the primary metric).
    headline: ClassVar[tuple[str, ...]] = ()
    #: How much an int8 export may lower :attr:`primary` on the validation split (in the metric's own
    #: units) before it is refused: the default of ``visionlab export --int8 --max-drop``.
    max_quantization_drop: ClassVar[float] = 0.01
    #: Metric names for which lower is better (besides every name ending in 'loss').
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    #: The config key that holds the model's input side (shown by ``visionlab tasks``).
    input_key: ClassVar[str] = "image_size"
    #: Config overrides of ``visionlab demo`` (a short training on synthetic data).
    demo_options: ClassVar[Mapping[str, Any]] = {}
    #: Per-class columns of the evaluation tables, in order.
    per_class_columns: ClassVar[tuple[str, ...]] = ()
    #: What the confusion matrix counts ('images', 'pixels').
    confusion_unit: ClassVar[str] = "images"
    #: The report page's heading and note over the images worth a look.
    examples_heading: ClassVar[str] = "Images worth a look"
    examples_note: ClassVar[str] = ""
    #: The predictions table's detail column, and whether ``--top-k`` applies.
    detail_column: ClassVar[str] = "detail"
    ranks_classes: ClassVar[bool] = False
    #: Whether its predictions write files (masks) beside the results.
    writes_files: ClassVar[bool] = False
    #: A per-pixel model run over whole images by blended tiles (one image per decoded batch; its
    #: exported graph takes any height and width that are multiples of 32).
    tiled: ClassVar[bool] = False
    #: The general recipe of the kind, ``configs/<general_recipe>.yaml``: what a folder of this kind
    #: trains with when no task describes it (``visionlab train --data DIR``, ``visionlab tasks new``).
    general_recipe: ClassVar[str] = ""
    #: Whether training fits a calibration of its probabilities (:meth:`calibrate`), that every surface applies.
    calibrates: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<kind {self.name}>"

    def saved_preprocessing(self, saved: Mapping[str, Any], source: str) -> Preprocessing:
        """The preprocessing record of a checkpoint or .onnx file (``source``) of this kind, its fields
        and this kind's own :attr:`preprocessing_keys` checked; a damaged one is a one-line error."""
        try:
            pre = Preprocessing.from_dict(saved)
            if pre.kind != self.name:
                raise ValueError(f"kind is {pre.kind!r}, but the model is of the {self.name} kind")
            for key, typ in self.preprocessing_keys.items():
                value = pre.get(key)
                if key not in pre:
                    raise ValueError(f"{key} is missing")
                number = typ is float and isinstance(value, (int, float))
                if isinstance(value, bool) or not (isinstance(value, typ) or number):
                    raise ValueError(f"{key} is {value!r}, not {'a number' if typ is float else 'a ' + typ.__name__}")
        except ValueError as exc:
            raise VisionlabError(f"{source} is damaged (preprocessing: {exc}).",
                                 "Train (or export) it again, or pass the run's other checkpoint.") from None
        return pre

    def higher_is_better(self, metric: str) -> bool:
        """The direction of a logged metric (its name without the ``val_``/``test_`` prefix)."""
        return metric not in self.lower_is_better and not metric.endswith("loss")

    # ------------------------------------------------------------------ training and evaluation
    def runner(self, cfg: Any, spec: Any, device: Any) -> Any:
        """The :class:`visionlab.engine.runner.TaskRunner` of one run of ``spec`` (data, step, evaluation)."""
        raise NotImplementedError

    def calibrate(self, runner: Any, model: Any) -> dict[str, Any] | None:
        """After training, the calibration of ``model`` (best.pt's weights) fitted on ``runner``'s
        validation split: a JSON-ready dict the trainer stores in best.pt as ``calibration`` and export
        in the .onnx metadata; ``temperature`` in it divides the logits before softmax on every surface.
        None for kinds that do not calibrate (the default) or without validation images."""
        return None

    def calibration_line(self, calibration: Mapping[str, Any]) -> str:
        """What a fitted calibration is, in words (the trainer's notice after fitting it)."""
        return "calibration fitted on the validation split"

    def calibration_note(self, source: Any, calibration: Mapping[str, Any] | None) -> str:
        """The one notice a surface gives for a model of a calibrating kind that carries no fitted
        calibration (a checkpoint from before it existed, or a run without validation images); "" otherwise."""
        if not self.calibrates or calibration:
            return ""
        return (f"note: {source} carries no fitted temperature, so its probabilities are the raw softmax (as before "
                "calibration existed); train it again with a validation split to calibrate them.")

    #: Whether training fits a detector of photos of none of its classes (:meth:`fit_unknown`).
    detects_unknown: ClassVar[bool] = False

    def fit_unknown(self, runner: Any, model: Any) -> dict[str, Any] | None:
        """After training, the detector of photos that show none of the classes, fitted on ``runner``'s
        splits (training photos' features, a threshold on the validation split): a dict the trainer
        stores in best.pt as ``unknown``. None for kinds without one (the default) or without validation images."""
        return None

    def unknown_line(self, detector: Mapping[str, Any]) -> str:
        """What a fitted detector is, in words (the trainer's notice after fitting it)."""
        return "unknown detector fitted on the validation split"

    def unknown_scorer(self, state: Mapping[str, Any], model: Any) -> Any:
        """A callable: normalised batch -> (logits, score per image), for the model of ``state``
        (a checkpoint's, or an .onnx file's whose graph has the score as its second output);
        None without a fitted detector (the default)."""
        return None

    def exported(self, state: Mapping[str, Any], model: Any) -> tuple[Any, tuple[Output, ...]]:
        """The module export traces for the model of ``state`` and the outputs it returns (the
        network and :attr:`outputs` by default; a classifier with a detector adds its score)."""
        return model, self.outputs

    def unknown_note(self, source: Any, detector: Mapping[str, Any] | None) -> str:
        """The one notice a surface gives for a model of a detecting kind that carries no detector
        (a checkpoint from before it existed); "" otherwise."""
        if not self.detects_unknown or detector:
            return ""
        exported = Path(str(source)).suffix.lower() in (".onnx", ".xml")  # calibrate takes the .pt it was exported from
        how = ("visionlab calibrate on the checkpoint (.pt) it was exported from, then export that again" if exported
               else f"visionlab calibrate {source}")
        return (f"note: {source} carries no unknown detector, so every photo gets one of its classes (as before it "
                f"existed); add one with: {how}")

    # ------------------------------------------------------------------ data
    def make_synthetic(self, root: Path, classes: list[str], seed: int) -> None:
        """Write a small synthetic dataset of this kind's layout into the empty folder ``root``."""
        raise NotImplementedError

    def synthetic_data(self, spec: Any, seed: int = 0) -> Path:
        """The folder of task ``spec``'s synthetic dataset (made once, then reused)."""
        from visionlab.data.synthetic import make_synthetic

        return make_synthetic(spec.name, lambda root: self.make_synthetic(root, list(spec.default_classes), seed), seed=seed)

    def demo_inputs(self, root: Path) -> list[Path]:
        """A few images of the synthetic dataset at ``root`` for the demo's prediction."""
        raise NotImplementedError

    def check_data(self, path: Any, classes: list[str] | None = None, **options: Any) -> Any:
        """The data doctor's :class:`visionlab.data.doctor.Report` of a dataset of this kind."""
        raise VisionlabError(f"the data doctor has no checks for {self.name} datasets.", "Check the folder by hand.")

    def dataset_classes(self, path: Path) -> list[str]:
        """The class names of the dataset at ``path``, in the order training numbers them (from the
        data, as the runner reads it); a folder that holds no data of this kind is a one-line error."""
        raise VisionlabError(f"{self.name} datasets cannot list their classes.", "Write the task YAML's 'classes' by hand.")
    def suspects(self, cfg: Any, spec: Any, fit: Any, *, folds: int = 5, minutes: float = 10.0, epochs: int | None = None,
                 device: str = "auto", on_fold: Any = None, move_to: Path | None = None, method: str = "auto",
                 on_features: Any = None) -> Any:
        """``visionlab data suspects``: the photos of ``cfg.data`` whose label is probably wrong, from
        ``folds`` out-of-fold models (``method``: heads on frozen features, or trainings by ``fit``,
        :func:`visionlab.api.suspects`); ``move_to`` is checked before any training. Kinds without labels per photo cannot say."""
        raise VisionlabError(f"finding wrong labels works on tasks with one label per photo; {spec.name} is a {self.name} task.",
                             "Run it on a classifier's data, e.g. visionlab data suspects --task cracks --data DIR.")

    def recognizes(self, path: Path) -> bool:
        """Whether the existing folder (or file) ``path`` is laid out as this kind's datasets are;
        :func:`visionlab.kinds.guess_kind` asks the most recently registered kinds first."""
        return False

    # ------------------------------------------------------------------ prediction
    def loader_batch_size(self, batch_size: int) -> int:
        """Images per decoded batch of the predictor (whole-image kinds batch; tiled ones go one by one)."""
        return 1 if self.tiled else batch_size

    def predict_arrays(self, model: LoadedModel, arrays: Sequence[Any], top_k: int, sources: Sequence[str],
                       originals: Sequence[Any]) -> list[Prediction]:
        """The model step of :class:`visionlab.engine.predict.Predictor` on preprocessed images
        (HxWx3 uint8 arrays; ``originals`` the images before preprocessing), one result per image."""
        raise NotImplementedError

    def sample_inputs(self, root: Path, count: int) -> list[Path]:
        """``count`` image files spread over the dataset folder ``root`` (export's end-to-end parity)."""
        from visionlab.data.io import expand_inputs

        files = expand_inputs([root])
        picks = {round(j * (len(files) - 1) / max(1, count - 1)) for j in range(count)} if files else set()
        return [Path(files[i]) for i in sorted(picks)]

    def answer_difference(self, prediction: Prediction, row: Mapping[str, Any]) -> tuple[float, int, int]:
        """How far a runtime answer (a row of :meth:`runtime_rows`) is from the predictor's for the same
        file: (largest absolute probability difference, equal units, units counted); by default the
        confidences, and whether the labels agree."""
        return abs(float(prediction.confidence) - float(row["confidence"])), int(prediction.label == row["label"]), 1

    def flat_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One row of an evaluation's per-image listing as flat CSV columns (nested fields spread
        over several); the row as it is by default."""
        return dict(row)

    def explain(self, model: LoadedModel, arrays: Sequence[Any], predictions: Sequence[Prediction]) -> list[Any]:
        """Why the model gave each answer: one RGB uint8 overlay per preprocessed image (HxWx3 uint8
        arrays, as :meth:`predict_arrays` got them) and its prediction, what the model looked at drawn
        over the photo (``predict --explain``, serve's ``explain=1``, the report). Called first with no
        images, to say before any work whether it can: kinds that cannot raise one line (the default)."""
        raise VisionlabError(f"{self.name} models cannot explain their answers.",
                             "Leave out --explain (or explain=1 on serve): this kind has no explanation.")

    # ------------------------------------------------------------------ the torch-free runtime
    def runtime_rows(self, runtime: Any, batch: Sequence[tuple[Any, Any]], top_k: int) -> list[dict[str, Any]]:
        """:class:`visionlab.runtime.Runtime`'s answers (dicts: label, confidence, error and the kind's
        fields) for ``(source, HxWx3 uint8 array)`` pairs, with numpy and onnxruntime only."""
        raise VisionlabError(f"the torch-free runtime cannot run {self.name} models.",
                             "Predict with the checkpoint instead: visionlab predict IMAGES --checkpoint best.pt.")
