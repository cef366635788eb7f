"""``tfsky evaluate classifier``: accuracy, per-class P/R/F1, confusion matrix and calibration vs two baselines.

The split is rebuilt from the model's own config (same sources, class map,
seed: the split by source it was trained with). Two baselines are fitted on
the training split only:

- majority class: always the most common training condition (its
  probabilities are the training class frequencies);
- colour statistics: a multinomial logistic regression on 16 hand-made
  features of the frame and of its upper third (where the sky usually is):
  mean and spread of brightness and saturation, blueness (B - R), the share
  of very bright and very dark pixels, and texture (mean gradient magnitude).

Calibration: expected calibration error over `ECE_BINS` equal-width
confidence bins, and a reliability diagram.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tfsky.config import from_dict
from tfsky.data.labelled import ClassifierDataConfig, colour_statistics, labelled_set, load_images
from tfsky.evaluate.report import Table, markdown_document, write_report
from tfsky.io.atomic import atomic_path
from tfsky.predict.classify import WeatherClassifier

ECE_BINS = 15
FEATURE_SIZE = 128


@dataclasses.dataclass
class ClassifierScores:
    """The metrics of one predictor on one split."""

    name: str
    accuracy: float
    per_class: dict[str, dict[str, float]]  # condition -> precision, recall, f1, support
    confusion: list[list[int]]  # rows: true condition, columns: predicted
    ece: float
    reliability: list[dict]  # per bin: low, high, count, confidence, accuracy

    @property
    def macro_f1(self) -> float:
        return float(np.mean([c["f1"] for c in self.per_class.values()]))


@dataclasses.dataclass
class ClassifierReport:
    conditions: list[str]
    split: str
    counts: dict[str, int]  # images per split
    sources: dict[str, int]  # sources per split
    scores: list[ClassifierScores]  # the model first, then the baselines
    files: list[Path]  # everything written

    def to_json(self) -> dict:
        return {
            "conditions": self.conditions,
            "split": self.split,
            "images": self.counts,
            "sources": self.sources,
            "scores": [dataclasses.asdict(s) | {"macro_f1": s.macro_f1} for s in self.scores],
        }


def evaluate_classifier(model_path: Path, out_dir: Path, split: str = "val") -> ClassifierReport:
    """Score the classifier and both baselines on ``split``; write JSON, Markdown and the two plots."""
    classifier = WeatherClassifier.load(model_path)
    data = labelled_set(from_dict(ClassifierDataConfig, classifier.info.config["data"], "data"))
    conditions = data.conditions
    truth = {name: np.array([conditions.index(i.condition) for i in items]) for name, items in data.splits.items()}
    inputs = load_images(data.splits[split], classifier.load_size, classifier.image_size)
    model_probs = classifier.probabilities(inputs)
    frequencies = np.bincount(truth["train"], minlength=len(conditions)) / len(truth["train"])
    colour = ColourBaseline.fit(features(data.splits["train"]), truth["train"], len(conditions))
    predictions = {
        f"classifier ({classifier.trained.model.backbone})": model_probs,
        "majority class": np.tile(frequencies, (len(inputs), 1)),
        "colour statistics (logistic regression)": colour.probabilities(features(data.splits[split])),
    }
    scores = [score(name, truth[split], probs, conditions) for name, probs in predictions.items()]
    out_dir = Path(out_dir)
    files = [
        draw_confusion(scores[0], conditions, out_dir / "confusion.png"),
        draw_reliability(scores, out_dir / "reliability.png"),
    ]
    report = ClassifierReport(
        conditions,
        split,
        {k: len(v) for k, v in data.splits.items()},
        {k: len({i.source for i in v}) for k, v in data.splits.items()},
        scores,
        files,
    )
    report.files = [*write_report(out_dir, "classifier_eval", report.to_json(), markdown(report)), *files]
    return report


def score(name: str, truth: np.ndarray, probabilities: np.ndarray, conditions: list[str]) -> ClassifierScores:
    """Accuracy, per-class precision/recall/F1, confusion matrix and calibration of ``probabilities``."""
    k = len(conditions)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = {}
    for index, condition in enumerate(conditions):
        hits = confusion[index, index]
        precision = hits / max(confusion[:, index].sum(), 1)
        recall = hits / max(confusion[index].sum(), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[condition] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(confusion[index].sum()),
        }
    ece, bins = calibration(truth, probabilities)
    return ClassifierScores(name, float((predicted == truth).mean()), per_class, confusion.tolist(), ece, bins)


def calibration(truth: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict]]:
    """Expected calibration error (top-label, equal-width bins) and the reliability diagram's bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == truth
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece, rows = 0.0, []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        row = {
            "low": float(edges[b]),
            "high": float(edges[b + 1]),
            "count": count,
            "confidence": None,
            "accuracy": None,
        }
        if count:
            mean_confidence, accuracy = float(confidence[members].mean()), float(correct[members].mean())
            row["confidence"], row["accuracy"] = mean_confidence, accuracy
            ece += count / len(truth) * abs(mean_confidence - accuracy)
        rows.append(row)
    return float(ece), rows


# --- the colour-statistics baseline ---------------------------------------------------------------


def features(images) -> np.ndarray:
    """``[N, 16]`` colour statistics of labelled images (see the module docstring)."""
    squares = load_images(images, FEATURE_SIZE)
    return np.stack([colour_features(square) for square in squares])


def colour_features(rgb: np.ndarray) -> np.ndarray:
    """16 statistics of one uint8 RGB image: the `colour_statistics` of the whole frame, then of its upper third."""
    top = np.zeros(rgb.shape[:2], bool)
    top[: rgb.shape[0] // 3] = True
    return np.concatenate([colour_statistics(rgb, np.ones(rgb.shape[:2], bool)), colour_statistics(rgb, top)])


@dataclasses.dataclass
class ColourBaseline:
    """Multinomial logistic regression (L2) on standardised features, fitted by gradient descent."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # [features + 1, classes], the last row is the bias

    @classmethod
    def fit(
        cls, x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3, steps: int = 3000, rate: float = 0.5
    ) -> "ColourBaseline":
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        design = _with_bias((x - mean) / scale)
        onehot = np.eye(classes)[y]
        weights = np.zeros((design.shape[1], classes))
        for _ in range(steps):  # convex: plain full-batch gradient descent converges
            gradient = design.T @ (_softmax(design @ weights) - onehot) / len(x) + l2 * weights
            weights -= rate * gradient
        return cls(mean, scale, weights)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return _softmax(_with_bias((x - self.mean) / self.scale) @ self.weights)


def _with_bias(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# --- reports ----------------------------------------------------------------------------------------


def summary_table(report: ClassifierReport) -> Table:
    rows = [[s.name, s.accuracy, s.macro_f1, s.ece] for s in report.scores]
    note = (
        f"{report.split} split: {report.counts[report.split]} images from {report.sources[report.split]} "
        f"sources (train: {report.counts['train']} images, {report.sources['train']} sources)"
    )
    return Table("Weather classifier vs baselines", ["predictor", "accuracy", "macro F1", "ECE"], rows, note)


def per_class_table(scores: ClassifierScores) -> Table:
    rows = [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in scores.per_class.items()]
    return Table(f"Per class: {scores.name}", ["condition", "precision", "recall", "F1", "images"], rows)


def confusion_table(scores: ClassifierScores, conditions: list[str]) -> Table:
    rows = [[f"true {c}", *counts] for c, counts in zip(conditions, scores.confusion)]
    return Table(f"Confusion matrix: {scores.name}", ["", *(f"predicted {c}" for c in conditions)], rows)


def markdown(report: ClassifierReport) -> str:
    tables = [
        summary_table(report),
        *(per_class_table(s) for s in report.scores),
        confusion_table(report.scores[0], report.conditions),
    ]
    return markdown_document(
        "Weather classifier evaluation",
        [
            "Validation split by source (near-duplicate photos count as one source); baselines fitted on the "
            "training split. ECE: expected calibration error over 15 confidence bins. Plots: confusion.png, "
            "reliability.png."
        ],
        tables,
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_confusion(scores: ClassifierScores, conditions: list[str], path: Path) -> Path:
    plt = _pyplot()
    matrix = np.array(scores.confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(conditions) + 2, 1.2 * len(conditions) + 1.5))
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(conditions)), conditions, rotation=30)
    ax.set_yticks(range(len(conditions)), conditions)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{scores.name}: accuracy {scores.accuracy:.3f}")
    return _save(fig, path, plt)


def draw_reliability(scores: list[ClassifierScores], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for s in scores:
        used = [b for b in s.reliability if b["count"]]
        ax.plot(
            [b["confidence"] for b in used],
            [b["accuracy"] for b in used],
            marker="o",
            label=f"{s.name} (ECE {s.ece:.3f})",
        )
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")  # a useful model's points sit top right
    ax.grid(alpha=0.3)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path
