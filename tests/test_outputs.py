"""`jaxstyle.outputs`: no output ever destroys an input or another run's files.

The rules are checked one by one on the planning functions, then through the
command line: a run that would write over its content, style, mask or init
image is refused (exit 2, nothing written), a batch whose output folder is its
input folder never takes its own outputs or its style image as content, and a
fuzz test drives every command with random combinations of paths and checks
that no input file's bytes ever change.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random

import pytest

from jaxstyle import cli, images, outputs
from jaxstyle.errors import UsageError
from synthetic import photo


def _save(path: pathlib.Path, seed: int, shape=(32, 32)) -> pathlib.Path:
    images.save_image(path, photo(*shape, seed=seed))
    return path


def _digests(paths) -> dict[pathlib.Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _run(*argv, weights) -> int:
    return cli.main([*map(str, argv), "--weights", str(weights), "--size", "16", "--steps", "1", "--quiet"])


# ----------------------------------------------------------------------------
# The rules


def test_side_files_are_named_after_the_full_output_name():
    a, b = outputs.SideFiles(pathlib.Path("out/a.png")), outputs.SideFiles(pathlib.Path("out/a.jpg"))
    assert a.checkpoint == pathlib.Path("out/a.png.checkpoint.npz")
    assert a.interrupted == pathlib.Path("out/a.png.interrupted.png")
    assert a.last_finite == pathlib.Path("out/a.png.last-finite.png")
    assert a.snapshot(100) == pathlib.Path("out/a.png.step00100.png")
    assert not set(a.all_fixed()) & set(b.all_fixed())  # a.png and a.jpg share nothing


def test_a_folder_runs_closing_line_counts_in_words_and_names_what_failed():
    assert outputs.summary(1, 1, 0, []) == "1 input: 1 written, 0 already done (skipped), 0 failed"
    assert (outputs.summary(5, 3, 1, ["a.png"], seconds=2.26)
            == "5 inputs: 3 written in 2.3 s, 1 already done (skipped), 1 failed: a.png")


def test_an_output_that_is_an_input_is_refused_also_through_a_link(tmp_path):
    content = _save(tmp_path / "photo.png", 1)
    (tmp_path / "link.png").symlink_to(content)
    inputs = outputs.inputs_by_path([("the content image", content)])
    for path in (content, tmp_path / "link.png", tmp_path / "." / "photo.png"):
        with pytest.raises(UsageError, match="is the content image; writing it would destroy that input"):
            outputs.check_output(path, inputs, overwrite=True)
    # A side file of an output may not be an input either.
    side = tmp_path / "out.png.interrupted.png"
    _save(side, 2)
    with pytest.raises(UsageError, match="side file"):
        outputs.check_output(tmp_path / "out.png", outputs.inputs_by_path([("style image 1", side)]), overwrite=True)


def test_a_batch_leaves_out_styles_and_its_earlier_outputs_and_refuses_to_replace_photos(tmp_path):
    folder = tmp_path / "photos"
    a, b, style = _save(folder / "a.jpg", 1), _save(folder / "b.png", 2), _save(folder / "style.png", 3)
    inputs = outputs.inputs_by_path([("style image 1", style)])
    # The style image is no content; a.jpg's output a.png is new; b.png's output would be b.png itself.
    with pytest.raises(UsageError, match="b.png.* is the content image .*b.png"):
        outputs.plan_batch([a, b, style], folder, ".png", inputs)
    contents, outs, notes = outputs.plan_batch([a, style], folder, ".png", inputs)
    assert contents == [a] and outs == [folder / "a.png"] and "style.png" in notes[0] and "left out" in notes[0]
    # After a run, a.png is jaxstyle's output of a.jpg: the next run leaves it out instead of stylizing it.
    images.save_image(folder / "a.png", photo(32, 32, seed=4), metadata={"jaxstyle": "0.1.0", "content": "a.jpg"})
    contents, outs, notes = outputs.plan_batch([a, folder / "a.png"], folder, ".png", inputs)
    assert contents == [a] and "earlier output" in notes[0]
    # A photo of one's own at that name is not jaxstyle's: refused, never replaced.
    (folder / "a.png").unlink()
    _save(folder / "a.png", 5)
    with pytest.raises(UsageError, match="is the content image"):
        outputs.plan_batch([a, folder / "a.png"], folder, ".png", inputs)
    with pytest.raises(UsageError, match="would both be written"):
        outputs.plan_batch([tmp_path / "x" / "n.jpg", tmp_path / "y" / "n.png"], tmp_path / "out", ".png", {})


def test_the_log_is_checked_before_any_compute(tmp_path):
    content = _save(tmp_path / "photo.png", 1)
    inputs = outputs.inputs_by_path([("the content image", content)])
    for log, words in [(str(tmp_path / "loss.txt"), "must be a file name ending in .json or .csv"),
                       (str(tmp_path / ".json"), "must be a file name"),
                       (str(content / "x.csv"), "not a directory"),
                       (str(tmp_path / "sheet.csv"), "is also an output"),
                       (str(tmp_path / "photo.png"), "must be a file name")]:
        with pytest.raises(UsageError, match=words):
            outputs.check_log(log, inputs, [tmp_path / "out.png", tmp_path / "sheet.csv"])
    outputs.check_log(str(tmp_path / "new" / "loss.json"), inputs, [tmp_path / "out.png"])  # a missing folder is fine


# ----------------------------------------------------------------------------
# Through the command line


@pytest.fixture
def folder(tmp_path) -> pathlib.Path:
    d = tmp_path / "photos"
    for i, name in enumerate(("a.jpg", "b.jpg", "style.png"), 1):
        _save(d / name, i)
    return d


def test_stylize_refuses_to_write_over_its_content_or_style(folder, tiny_weights, capsys):
    before = _digests(folder.iterdir())
    for output, role in ((folder / "a.jpg", "the content image"), (folder / "style.png", "style image 1")):
        code = _run("stylize", folder / "a.jpg", "--style", folder / "style.png", "-o", output, "--overwrite",
                    weights=tiny_weights)
        err = capsys.readouterr().err
        assert code == 2 and f"is {role}" in err and err.count("\n") == 1, err
    assert _digests(folder.iterdir()) == before


def test_a_batch_into_its_own_folder_never_takes_its_outputs_or_style_as_content(folder, tiny_weights, capsys):
    originals = _digests(folder.iterdir())
    argv = ("batch", folder, "--style", folder / "style.png", "-o", folder)
    assert _run(*argv, weights=tiny_weights) == 0
    err = capsys.readouterr().err
    assert "style.png' is style image 1, not a content image; left out" in err
    assert "2 inputs: 2 written" in err
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg", "a.png", "b.jpg", "b.png", "style.png"]
    for rerun in ((), ("--overwrite",)):  # the outputs are not inputs the second time either
        assert _run(*argv, *rerun, weights=tiny_weights) == 0
        err = capsys.readouterr().err
        assert "a.png' is an earlier output of this batch" in err and "2 inputs" in err, err
    assert {p: d for p, d in _digests(folder.iterdir()).items() if p in originals} == originals


def test_a_batch_that_would_replace_its_photos_is_refused(folder, tiny_weights, capsys):
    before = _digests(folder.iterdir())
    assert _run("batch", folder, "--style", folder / "style.png", "-o", folder, "--ext", ".jpg", "--overwrite",
                weights=tiny_weights) == 2
    assert "is the content image" in capsys.readouterr().err
    assert _digests(folder.iterdir()) == before


def test_fuzzed_paths_never_change_an_input(tmp_path, tiny_weights, capsys):
    """Random commands over inputs, links to inputs, folders that exist or not: no input byte ever changes."""
    rng = random.Random(20261130)
    outcomes = {0: 0, 2: 0}
    for case in range(36):
        root = tmp_path / f"case{case}"
        photos = root / "photos"
        files = [_save(photos / "a.png", 1), _save(photos / "b.jpg", 2),
                 _save((photos if rng.random() < 0.5 else root) / "style.png", 3), _save(root / "mask.png", 4)]
        (root / "link.png").symlink_to(files[0])
        (root / "dirlink").symlink_to(photos, target_is_directory=True)
        before = _digests(files)
        places = [*files, root / "link.png", root / "dirlink" / "b.jpg", root / "out.png", photos / "new.png",
                  root / "missing" / "deep" / "out.png", photos, root, root / "dirlink", root / "fresh"]
        command = rng.choice(["stylize", "batch", "sweep"])
        output = rng.choice(places)
        content = rng.choice([files[0], files[1], root / "link.png"])
        argv = [command, photos if command == "batch" else content, "--style", files[2], "-o", output]
        named = [files[2]] + ([] if command == "batch" else [content])  # the command's own inputs
        if command == "sweep":
            argv += ["--tv-weight", "0,1"]
        if rng.random() < 0.6:
            argv.append("--overwrite")
        if rng.random() < 0.3:
            named.append(rng.choice(files[:2]))
            argv += ["--init", named[-1]]
        if command != "batch" and rng.random() < 0.3:
            named.append(files[3])
            argv += ["--content-mask", files[3], "--style-mask", files[3]]
        if rng.random() < 0.3:
            argv += ["--log", rng.choice([files[3], root / "loss.json", output])]
        code = _run(*argv, weights=tiny_weights)
        capsys.readouterr()
        assert code in (0, 1, 2), (case, argv)
        outcomes[code] = outcomes.get(code, 0) + 1
        # A batch's inputs are everything in its folder. A file that is no input may be an output:
        # that is what --overwrite is for.
        named = {pathlib.Path(os.path.realpath(p)) for p in named}
        used = [f for f in files if f in named or (command == "batch" and f.parent == photos)]
        assert _digests(used) == {f: before[f] for f in used}, (case, argv)
    assert outcomes[0] >= 5 and outcomes[2] >= 5, outcomes  # both kinds of case were reached
