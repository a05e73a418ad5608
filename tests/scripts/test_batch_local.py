"""The batch scoring script under the local runner, which drives it as Azure ML's batch driver
does: real MNIST test images written as PNG files, a real trained model (``trained_output``,
shared with tests/serving), and broken files that must come back as rows saying what is wrong.

The expected digits are the model's own, computed here in-process with Keras on the same
pixels; the driver's rules (mini-batches in file order, init() once, retries, error_threshold)
are checked with small scoring scripts written by the tests."""

from __future__ import annotations

import csv
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.__main__ import main
from scripts.endpoints import batch_local as driver

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "serving" / "batch" / "code" / "batch_score.py"
COLUMNS = ["file", "digit", "probability", "error"]
SUBSET = 600  # images of the fast tests; the slow test scores all 10,000


def write_pngs(folder: Path, images: np.ndarray, start: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images, start=start):
        name = f"{i:05d}.png"
        Image.fromarray(image, "L").save(folder / name, compress_level=1)
        names.append(name)
    return names


def write_broken(folder: Path, image: np.ndarray) -> dict[str, str]:
    """Files no model can score, and a phrase their row's error must contain."""
    (folder / "notes.txt").write_text("not a digit at all\n")
    Image.new("L", (32, 32)).save(folder / "big-32x32.png")
    (folder / "empty.png").write_bytes(b"")
    whole = folder / "whole.png"
    Image.fromarray(image, "L").save(whole, compress_level=1)
    (folder / "truncated.png").write_bytes(whole.read_bytes()[:60])
    whole.unlink()
    return {
        "notes.txt": "not an image Pillow can read",
        "big-32x32.png": "PNG of 32x32 pixels; the model takes 28x28",
        "empty.png": "empty file (0 bytes)",
        "truncated.png": "unreadable image",
    }


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [dict(zip(COLUMNS, row, strict=True)) for row in csv.reader(f)]


def model_predictions(model_dir: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's own digits and top probabilities for uint8 images, in-process."""
    import keras

    model = keras.models.load_model(model_dir / "data" / "model.keras", compile=False)
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    probabilities = np.asarray(model.predict(x, batch_size=1000, verbose=0))
    return probabilities.argmax(axis=1), probabilities.max(axis=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model folder of the training contract's shape (784 pixels in, 10 probabilities out)
    with seeded, untrained weights: the fast tests compare the CSV with this model's own
    answers; the slow test scores with the really trained model."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(32, "relu"), keras.layers.Dense(10, "softmax")]
    )
    folder = tmp_path_factory.mktemp("untrained") / "model"
    (folder / "data").mkdir(parents=True)
    model.save(folder / "data" / "model.keras")
    (folder / "MLmodel").write_text("flavors:\n  keras: {data: data}\n")
    return folder


@pytest.fixture(scope="module")
def trained_model(trained_output: Path) -> Path:
    return trained_output / "model"


@pytest.fixture(scope="module")
def subset(tmp_path_factory, mnist_test) -> tuple[Path, np.ndarray, dict[str, str]]:
    images, labels = mnist_test
    folder = tmp_path_factory.mktemp("digits")
    write_pngs(folder, images[:SUBSET])
    broken = write_broken(folder, images[0])
    return folder, labels[:SUBSET], broken


def settings(**overrides) -> driver.Settings:
    return driver.settings_from_spec(driver.DEPLOYMENT_SPEC, **overrides)


def test_every_file_gets_the_models_own_digit_and_broken_files_say_why(
    subset, model_dir: Path, mnist_test, tmp_path: Path
) -> None:
    folder, _, broken = subset
    output = tmp_path / "predictions.csv"
    report = driver.run_local(folder, output, model_dir, settings(mini_batch_size=64))

    rows = read_rows(output)
    assert len(rows) == SUBSET + 4 == report.files == report.rows
    assert report.failed_files == 0 and report.mini_batches == 10  # ceil(604 / 64)
    by_file = {row["file"]: row for row in rows}
    digits, top = model_predictions(model_dir, mnist_test[0][:SUBSET])
    for i in range(SUBSET):
        row = by_file[f"{i:05d}.png"]
        assert (row["digit"], row["error"]) == (str(digits[i]), ""), row
        assert float(row["probability"]) == pytest.approx(top[i], abs=2e-6)
    assert len(set(digits)) > 3  # the check compares varied answers, not one constant
    for name, phrase in broken.items():
        row = by_file[name]
        assert (row["digit"], row["probability"]) == ("", ""), row
        assert phrase in row["error"], row
    assert [row["file"] for row in rows] == sorted(by_file)  # file order, as mini-batched


def test_colour_and_16_bit_images_score_like_their_grayscale(
    model_dir: Path, mnist_test, tmp_path: Path
) -> None:
    images = mnist_test[0][:20]
    gray, colour = tmp_path / "gray", tmp_path / "colour"
    write_pngs(gray, images)
    colour.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image, "L").convert("RGB").save(colour / f"{i:05d}-rgb.png")
        rgba = np.dstack([np.full_like(image, 255)] * 3 + [image])  # white digit by alpha
        Image.fromarray(rgba, "RGBA").save(colour / f"{i:05d}-rgba.png")
        Image.fromarray(image.astype(np.uint16) * 257).save(colour / f"{i:05d}-16bit.png")
    run = settings(mini_batch_size=25)
    driver.run_local(gray, tmp_path / "gray.csv", model_dir, run)
    driver.run_local(colour, tmp_path / "colour.csv", model_dir, run)
    expected = {row["file"][:5]: row for row in read_rows(tmp_path / "gray.csv")}
    rows = read_rows(tmp_path / "colour.csv")
    assert len(rows) == 60
    for row in rows:
        want = expected[row["file"][:5]]
        assert (row["digit"], row["error"]) == (want["digit"], ""), row
        assert float(row["probability"]) == pytest.approx(float(want["probability"]), abs=1e-5)


def test_file_names_with_commas_and_quotes_stay_one_csv_field(
    model_dir: Path, mnist_test, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    name = 'seven, "best" one.png'
    Image.fromarray(mnist_test[0][0], "L").save(folder / name)
    driver.run_local(folder, tmp_path / "p.csv", model_dir, settings())
    (row,) = read_rows(tmp_path / "p.csv")
    assert row["file"] == name and row["digit"].isdigit() and row["error"] == ""


# --------------------------------------------------------------------------- driver rules

SPY = """
import json, os

calls = []

def init():
    calls.append("init")
    with open(os.environ["SPY_LOG"], "a") as log:
        log.write(json.dumps({"init": os.environ["AZUREML_MODEL_DIR"]}) + "\\n")

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    with open(os.environ["SPY_LOG"], "a") as log:
        absolute = all(map(os.path.isabs, mini_batch))
        log.write(json.dumps({"run": names, "absolute": absolute}) + "\\n")
    fail = [n for n in names if n.startswith("boom")]
    if fail and os.environ.get("SPY_MODE") == "raise":
        raise ValueError(f"cannot score {fail[0]}")
    marker = os.environ["SPY_LOG"] + ".retried"
    if fail and os.environ.get("SPY_MODE") == "flaky" and not os.path.exists(marker):
        open(marker, "w").close()
        raise ConnectionError("blob storage hiccup")
    if os.environ.get("SPY_MODE") == "short":
        names = [n for n in names if not n.startswith("boom")]
    return [f"{n},ok" for n in names]
"""


@pytest.fixture
def spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A scoring script that logs its calls; files named boom* make it fail as SPY_MODE says."""
    script = tmp_path / "spy_score.py"
    script.write_text(textwrap.dedent(SPY))
    log = tmp_path / "spy.jsonl"
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("c.png", "a.png", "boom1.png", "b.png", "sub/d.png", "e.png", "f.png"):
        (folder / name).write_bytes(b"x")
    model = tmp_path / "model"
    model.mkdir()

    def go(mode: str = "", **overrides):
        monkeypatch.setenv("SPY_MODE", mode)
        run = driver.Settings(
            scoring_script=script,
            environment_variables=(("SPY_LOG", str(log)),),
            **{"max_retries": 2, **overrides},
        )
        out = tmp_path / "out.csv"
        report = driver.run_local(folder, out, model, run)
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return report, calls, out

    return go


def test_init_runs_once_then_mini_batches_of_the_set_size_in_file_order(spy) -> None:
    report, calls, out = spy(mini_batch_size=3)
    assert "init" in calls[0] and calls[0]["init"].endswith("model")
    assert [c["run"] for c in calls[1:]] == [
        ["a.png", "b.png", "boom1.png"],
        ["c.png", "e.png", "f.png"],
        ["d.png"],  # sub/d.png: subfolders are input too
    ]
    assert all(c["absolute"] for c in calls[1:])
    assert len([c for c in calls if "init" in c]) == 1
    assert out.read_text().splitlines()[:2] == ["a.png,ok", "b.png,ok"]
    assert (report.files, report.mini_batches, report.rows) == (7, 3, 7)
    assert "SPY_LOG" not in os.environ  # the job's variables do not outlive it


def test_a_failing_mini_batch_is_retried_before_it_counts(spy) -> None:
    report, calls, _ = spy("flaky", mini_batch_size=3, error_threshold=0)
    runs = [c["run"] for c in calls if "run" in c]
    assert runs[0] == runs[1] == ["a.png", "b.png", "boom1.png"]  # the retry
    assert (report.retries, report.failed_files, report.rows) == (1, 0, 7)


def test_over_the_error_threshold_the_job_fails_and_writes_nothing(spy, tmp_path: Path) -> None:
    (tmp_path / "out.csv").write_text("an earlier run's predictions\n")
    with pytest.raises(driver.BatchJobFailed, match=r"3 file\(s\) failed .* error_threshold 2"):
        spy("raise", mini_batch_size=3, error_threshold=2)
    assert (tmp_path / "out.csv").read_text() == "an earlier run's predictions\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.csv")] == []
    calls = [json.loads(line) for line in (tmp_path / "spy.jsonl").read_text().splitlines()]
    runs = [c["run"] for c in calls if "run" in c]
    assert len(runs) == 3  # one try and max_retries=2 retries, then the job stopped


def test_failures_up_to_the_threshold_or_ignored_leave_the_job_completed(spy) -> None:
    report, _, out = spy("raise", mini_batch_size=3, error_threshold=3)
    assert (report.failed_files, report.rows) == (3, 4)  # the failed mini-batch has no rows
    assert out.read_text().splitlines() == ["c.png,ok", "e.png,ok", "f.png,ok", "d.png,ok"]
    report, _, _ = spy("raise", mini_batch_size=3, error_threshold=-1)
    assert report.failed_files == 3


def test_fewer_rows_than_files_count_as_failed_files(spy) -> None:
    with pytest.raises(driver.BatchJobFailed, match=r"1 file\(s\) failed"):
        spy("short", mini_batch_size=3, error_threshold=0)
    report, _, _ = spy("short", mini_batch_size=3, error_threshold=1)
    assert (report.failed_files, report.rows) == (1, 6)


def test_the_deployment_spec_is_where_the_local_run_takes_its_settings() -> None:
    run = settings()
    assert run.scoring_script == SCRIPT
    assert (run.mini_batch_size, run.error_threshold, run.max_retries) == (100, 0, 3)
    assert (run.output_action, run.output_file_name) == ("append_row", "predictions.csv")
    assert settings(mini_batch_size=7, error_threshold=-1).mini_batch_size == 7


# --------------------------------------------------------------------------- command line


def test_command_line_scores_a_folder(subset, model_dir: Path, tmp_path: Path, capsys) -> None:
    folder, _, _ = subset
    out = tmp_path / "scores.csv"
    argv = ["batch-score", "--local", str(folder), "--output", str(out)]
    assert main([*argv, "--model-dir", str(model_dir.parent), "--mini-batch-size", "200"]) == 0
    printed = capsys.readouterr()
    assert f"scored {SUBSET + 4} files in 4 mini-batches of 200" in printed.out
    assert "4 file(s) are not usable images: their rows' error column says why" in printed.out
    assert "INFO batch_score: model loaded: 28x28 images" in printed.err  # logging_level info
    assert len(read_rows(out)) == SUBSET + 4


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-input", "Input folder {tmp}/missing does not exist"),
        ("empty-input", "Input folder {tmp}/empty has no files"),
        ("output-is-folder", "Output {tmp} is a folder: name the CSV file"),
        ("output-folder-missing", "folder {tmp}/nowhere does not exist"),
        ("no-model", "--model-dir {tmp}/empty holds no MLflow model"),
        ("model-missing", "--model-dir {tmp}/nomodel is not a folder"),
    ],
)
def test_unusable_paths_are_one_paragraph_and_exit_2(
    case: str, message: str, subset, model_dir: Path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "empty").mkdir()
    folder, out, model = subset[0], tmp_path / "p.csv", model_dir
    if case == "no-input":
        folder = tmp_path / "missing"
    elif case == "empty-input":
        folder = tmp_path / "empty"
    elif case == "output-is-folder":
        out = tmp_path
    elif case == "output-folder-missing":
        out = tmp_path / "nowhere" / "p.csv"
    elif case == "no-model":
        model = tmp_path / "empty"
    else:
        model = tmp_path / "nomodel"
    argv = ["batch-score", "--local", str(folder), "--output", str(out), "--model-dir", str(model)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "p.csv").exists()


def test_a_failed_job_exits_1_and_says_why(subset, tmp_path: Path, capsys) -> None:
    broken_model = tmp_path / "model"
    (broken_model / "data").mkdir(parents=True)
    (broken_model / "MLmodel").write_text("flavors: {}\n")
    (broken_model / "data" / "model.keras").write_bytes(b"not a keras file")
    out = tmp_path / "p.csv"
    argv = ["batch-score", "--local", str(subset[0]), "--output", str(out)]
    assert main([*argv, "--model-dir", str(broken_model)]) == 1
    err = capsys.readouterr().err
    assert "init() of batch_score.py failed" in err and "Cannot load the Keras model" in err
    assert not out.exists()


# --------------------------------------------------------------------------- all of MNIST


@pytest.mark.slow
def test_all_10000_test_images_score_at_the_models_accuracy(
    trained_model: Path, mnist_test, tmp_path: Path
) -> None:
    model_dir = trained_model
    images, labels = mnist_test
    folder = tmp_path / "t10k"
    write_pngs(folder, images)
    broken = write_broken(folder, images[0])
    output = tmp_path / "predictions.csv"
    report = driver.run_local(folder, output, model_dir, settings())
    rows = read_rows(output)
    assert len(rows) == report.files == 10_004 and report.failed_files == 0
    by_file = {row["file"]: row for row in rows}
    digits, _ = model_predictions(model_dir, images)
    csv_digits = np.array([int(by_file[f"{i:05d}.png"]["digit"]) for i in range(10_000)])
    assert np.array_equal(csv_digits, digits)  # to the image
    accuracy = (csv_digits == labels).mean()
    metrics = json.loads((model_dir.parent / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    assert all(phrase in by_file[name]["error"] for name, phrase in broken.items())
