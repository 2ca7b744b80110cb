"""Every malformed import is refused with a message that says what to do, and changes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_annotate_support import (
    assignments,
    brush_result,
    cases,
    copy_project,
    encode_brush_rle,
    labelstudio_task,
    make_project,
    polygon_result,
    state_digest,
    write_mask_folder,
)

from alframe.annotate import import_labels, open_project
from alframe.cli.main import main
from alframe.errors import AlframeError


@dataclass
class Ctx:
    project: Path
    tmp: Path
    cases: dict[str, str]
    alice_only: str
    bob_only: str
    both: str
    unselected: str

    def png(self, path: Path, array: np.ndarray) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
        return path

    def good(self) -> np.ndarray:
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[8:20, 8:20] = 255
        return mask


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Ctx:
    root = tmp_path_factory.mktemp("errors")
    project = make_project(root, budget=6)
    given = assignments(project)
    alice = {i: ["alice"] for i, v in given.items() if "alice" in v}
    write_mask_folder(project, root / "alice_done", alice)
    with open_project(project) as opened:
        import_labels(opened, root / "alice_done")
        pool = opened.item_ids()
    return Ctx(
        project=project,
        tmp=root,
        cases=cases(project),
        alice_only=next(i for i, v in given.items() if v == ["alice"]),
        bob_only=next(i for i, v in given.items() if v == ["bob"]),
        both=next(i for i, v in given.items() if len(v) == 2),
        unselected=next(i for i in pool if i not in given),
    )


Case = Callable[[Ctx, Path], tuple[Path, dict[str, Any]]]


def _bob(c: Ctx, tmp: Path, array: np.ndarray, item: str | None = None) -> Path:
    c.png(tmp / "src" / "bob" / f"{c.cases[item or c.bob_only]}.png", array)
    return tmp / "src"


def _ls(c: Ctx, tmp: Path, tasks: list[Any]) -> Path:
    path = tmp / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def _ls_one(c: Ctx, tmp: Path, results: list[Any], item: str | None = None) -> Path:
    item = item or c.bob_only
    task = labelstudio_task(item, f"/x/{c.cases[item]}.png", [(7, results)])
    return _ls(c, tmp, [task])


def _region() -> np.ndarray:
    region = np.zeros((32, 32), dtype=bool)
    region[4:9, 4:9] = True
    return region


def _manifest(c: Ctx, tmp: Path, text: str, files: tuple[str, ...] = ("m.png",)) -> Path:
    for name in files:
        c.png(tmp / name, c.good())
    (tmp / "list.csv").write_text(text)
    return tmp / "list.csv"


def _two_files(c: Ctx, tmp: Path) -> Path:
    _bob(c, tmp, c.good())
    import tifffile

    tifffile.imwrite(tmp / "src" / "bob" / f"{c.cases[c.bob_only]}.tif", c.good())
    return tmp / "src"


def _one_good_one_bad(c: Ctx, tmp: Path) -> Path:
    _bob(c, tmp, c.good())
    return _bob(c, tmp, np.full((32, 32), 9, dtype=np.uint8), item=c.both)


def _nifti_3d(c: Ctx, tmp: Path) -> Path:
    import nibabel as nib

    (tmp / "src").mkdir()
    volume = np.zeros((32, 32, 2), dtype=np.uint8)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp / "src" / f"{c.cases[c.bob_only]}.nii.gz")
    return tmp / "src"


def _float_tiff(c: Ctx, tmp: Path) -> Path:
    import tifffile

    (tmp / "src").mkdir()
    tifffile.imwrite(tmp / "src" / f"{c.cases[c.bob_only]}.tif", np.full((32, 32), 0.5, np.float32))
    return tmp / "src"


def _signed_tiff(c: Ctx, tmp: Path) -> Path:
    import tifffile

    (tmp / "src").mkdir()
    tifffile.imwrite(tmp / "src" / f"{c.cases[c.bob_only]}.tif", np.full((32, 32), -5, np.int16))
    return tmp / "src"


def _corrupt(c: Ctx, tmp: Path) -> Path:
    (tmp / "src").mkdir()
    (tmp / "src" / f"{c.cases[c.bob_only]}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return tmp / "src"


def _changed_alice(c: Ctx, tmp: Path) -> Path:
    mask = c.good()
    mask[0, 0] = 255
    c.png(tmp / "src" / "alice" / f"{c.cases[c.alice_only]}.png", mask)
    return tmp / "src"


def _two_anonymous_annotations(c: Ctx, tmp: Path) -> Path:
    results = [brush_result(_region(), "foreground")]
    task = labelstudio_task(c.both, "/x/a.png", [(11, results), (12, results)])
    return _ls(c, tmp, [task])


def _rle_results(rle: list[int]) -> list[Any]:
    return [
        {
            "type": "brushlabels",
            "value": {"format": "rle", "rle": rle, "brushlabels": ["foreground"]},
        }
    ]


def _tiff_stack(c: Ctx, tmp: Path) -> Path:
    import tifffile

    (tmp / "src").mkdir()
    stack = np.stack([c.good(), np.zeros((32, 32), np.uint8)])
    tifffile.imwrite(tmp / "src" / f"{c.cases[c.bob_only]}.tif", stack)
    return tmp / "src"


def _tiff_appended_pages(c: Ctx, tmp: Path) -> Path:
    import tifffile

    (tmp / "src").mkdir()
    path = tmp / "src" / f"{c.cases[c.bob_only]}.tif"
    tifffile.imwrite(path, c.good())
    for _ in range(4):
        tifffile.imwrite(path, np.zeros((32, 32), np.uint8), append=True)
    return tmp / "src"


def _huge_rle() -> list[int]:
    rle = encode_brush_rle(np.repeat(_region().ravel() * 255, 4))
    return [255, 255, 255, 255, *rle[4:]]  # declares 2**32 - 1 values


def _manifest_through_symlink(c: Ctx, tmp: Path) -> Path:
    c.png(tmp / "outside" / "m.png", c.good())
    (tmp / "manifest").mkdir()
    (tmp / "manifest" / "masks").symlink_to(tmp / "outside", target_is_directory=True)
    (tmp / "manifest" / "list.csv").write_text(f"id,mask\n{c.bob_only},masks/m.png\n")
    return tmp / "manifest" / "list.csv"


CASES: dict[str, tuple[Case, str]] = {
    "multi-page tiff (stack)": (lambda c, t: (_tiff_stack(c, t), {}), "is a multi-page TIFF"),
    "multi-page tiff (appended pages)": (
        lambda c, t: (_tiff_appended_pages(c, t), {}),
        "is a multi-page TIFF (5 pages)",
    ),
    "label studio rle declaring 2**32-1 values": (
        lambda c, t: (_ls_one(c, t, _rle_results(_huge_rle())), {}),
        "holds 4294967295 values but a 32×32 RGBA image has 4096",
    ),
    "manifest path through a symlink": (
        lambda c, t: (_manifest_through_symlink(c, t), {}),
        "leads outside the manifest's folder",
    ),
    "manifest id with path separators": (
        lambda c, t: (_manifest(c, t, f"id,mask\n../../etc/{c.cases[c.bob_only]},m.png\n"), {}),
        "is not an item id and contains a path separator",
    ),
    "missing source": (lambda c, t: (t / "nope", {}), "does not exist; pass the folder"),
    "empty folder": (lambda c, t: ((t / "e").mkdir() or t / "e", {}), "holds no masks"),
    "unknown file name": (
        lambda c, t: (
            (_bob(c, t, c.good()).parent / "src", {})
            if c.png(t / "src" / "bob" / "stranger.png", c.good())
            else (t, {})
        ),
        "'stranger' names no item of the project",
    ),
    "item not in any round": (
        lambda c, t: (_bob(c, t, c.good(), item=c.unselected), {}),
        "is not in any exported round",
    ),
    "assigned to someone else": (
        lambda c, t: (
            c.png(t / "src" / "alice" / f"{c.cases[c.bob_only]}.png", c.good()).parent.parent,
            {},
        ),
        "was assigned to bob, not alice",
    ),
    "unknown --annotator": (
        lambda c, t: (_bob(c, t, c.good()), {"annotator": "zed"}),
        "--annotator 'zed' is not an annotator",
    ),
    "unknown annotator column": (
        lambda c, t: (_manifest(c, t, f"id,mask,annotator\n{c.bob_only},m.png,zed\n"), {}),
        "annotator 'zed' is not part of the project",
    ),
    "overlap item without annotator": (
        lambda c, t: (c.png(t / "src" / f"{c.cases[c.both]}.png", c.good()).parent, {}),
        "say whose mask this is",
    ),
    "wrong size": (
        lambda c, t: (_bob(c, t, np.zeros((16, 32), np.uint8)), {}),
        "is 16×32 (H×W) but its image is 32×32",
    ),
    "value not allowed": (
        lambda c, t: (_bob(c, t, np.full((32, 32), 7, np.uint8)), {}),
        "values [7] are neither class values",
    ),
    "values and indices mixed": (
        lambda c, t: (_bob(c, t, np.array([[0, 1, 255] * 10 + [0, 0]] * 32, np.uint8)), {}),
        "mixes class values [0, 255] and class indices",
    ),
    "negative value": (lambda c, t: (_signed_tiff(c, t), {}), "values [-5] are neither"),
    "corrupt png": (lambda c, t: (_corrupt(c, t), {}), "cannot read"),
    "colour mask": (
        lambda c, t: (
            _bob(c, t, np.dstack([c.good(), np.zeros((32, 32), np.uint8), c.good()])),
            {},
        ),
        "is a colour image",
    ),
    "float mask": (lambda c, t: (_float_tiff(c, t), {}), "non-integer values"),
    "3-D nifti": (lambda c, t: (_nifti_3d(c, t), {}), "each item is one 2-D slice"),
    "jpeg in folder": (
        lambda c, t: (
            (Image.fromarray(c.good()).save((t / "src").mkdir() or t / "src" / "x.jpg"))
            or t / "src",
            {},
        ),
        "not a mask file",
    ),
    "duplicate id (png + tif)": (
        lambda c, t: (_two_files(c, t), {}),
        "appears twice in the import",
    ),
    "duplicate manifest rows": (
        lambda c, t: (_manifest(c, t, f"id,mask\n{c.bob_only},m.png\n{c.bob_only},m.png\n"), {}),
        "appears twice in the import",
    ),
    "absolute manifest path": (
        lambda c, t: (_manifest(c, t, f"id,mask\n{c.bob_only},{t / 'm.png'}\n"), {}),
        "is absolute; manifests hold paths relative",
    ),
    "manifest path with ..": (
        lambda c, t: (_manifest(c, t, f"id,mask\n{c.bob_only},../m.png\n"), {}),
        "contains '..'",
    ),
    "manifest without mask column": (
        lambda c, t: (_manifest(c, t, f"id,file\n{c.bob_only},m.png\n"), {}),
        "needs an 'id' (or 'case') and a 'mask' column",
    ),
    "manifest mask missing": (
        lambda c, t: (_manifest(c, t, f"id,mask\n{c.bob_only},gone.png\n"), {}),
        "mask file gone.png does not exist next to the manifest",
    ),
    "invalid json": (
        lambda c, t: ((t / "x.json").write_text("[{") and t / "x.json", {}),
        "is not valid JSON",
    ),
    "json not a list": (
        lambda c, t: ((t / "x.json").write_text("42") and t / "x.json", {}),
        "expected a JSON list",
    ),
    "label studio unknown image": (
        lambda c, t: (_ls(c, t, [labelstudio_task(None, "/x/who.png", [(1, [])])]), {}),
        "'who.png' names no item",
    ),
    "label studio unknown label": (
        lambda c, t: (_ls_one(c, t, [brush_result(_region(), "tumour")]), {}),
        "label 'tumour' is not a class of the project",
    ),
    "label studio truncated rle": (
        lambda c, t: (
            _ls_one(
                c,
                t,
                _rle_results([*encode_brush_rle(np.repeat(_region().ravel() * 255, 4))[:6], 0, 0]),
            ),
            {},
        ),
        "truncated or damaged",
    ),
    "label studio rle of another size": (
        lambda c, t: (_ls_one(c, t, _rle_results(encode_brush_rle(np.zeros(16 * 16 * 4)))), {}),
        "a 32×32 RGBA image has",
    ),
    "label studio size mismatch": (
        lambda c, t: (
            _ls_one(c, t, [{**brush_result(_region(), "foreground"), "original_width": 64}]),
            {},
        ),
        "was made on a 32×64 image",
    ),
    "label studio polygon too short": (
        lambda c, t: (_ls_one(c, t, [polygon_result([[1, 1], [5, 5]], "foreground", 32, 32)]), {}),
        "needs at least 3 [x, y] points",
    ),
    "label studio polygon outside": (
        lambda c, t: (
            _ls_one(c, t, [polygon_result([[1, 1], [150, 5], [5, 50]], "foreground", 32, 32)]),
            {},
        ),
        "polygon points lie outside the image",
    ),
    "label studio brush not rle": (
        lambda c, t: (
            _ls_one(
                c,
                t,
                [
                    {
                        "type": "brushlabels",
                        "value": {"format": "png", "brushlabels": ["foreground"]},
                    }
                ],
            ),
            {},
        ),
        "brush format 'png' is not supported",
    ),
    "label studio rectangle": (
        lambda c, t: (_ls_one(c, t, [{"type": "rectanglelabels", "value": {"x": 1}}]), {}),
        "is not a segmentation region",
    ),
    "label studio anonymous double annotation": (
        lambda c, t: (_two_anonymous_annotations(c, t), {}),
        "say whose mask this is",
    ),
    "already labelled differently": (
        lambda c, t: (_changed_alice(c, t), {}),
        "pass --replace to overwrite",
    ),
    "unsupported file": (
        lambda c, t: ((t / "notes.txt").write_text("x") and t / "notes.txt", {}),
        "cannot import this kind of file",
    ),
    "one good, one bad": (lambda c, t: (_one_good_one_bad(c, t), {}), "nothing was imported"),
    "bad --unpainted": (
        lambda c, t: (_bob(c, t, c.good()), {"unpainted": "maybe"}),
        "--unpainted 'maybe'",
    ),
}


def test_there_are_at_least_25_cases() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_import_is_refused_and_changes_nothing(
    ctx: Ctx, tmp_path: Path, name: str
) -> None:
    build, expected = CASES[name]
    source, kwargs = build(ctx, tmp_path)
    before = state_digest(ctx.project)
    with open_project(ctx.project) as opened:
        n_before = opened.store.query("SELECT COUNT(*) AS n FROM annotations")[0]["n"]
        with pytest.raises(AlframeError) as caught:
            import_labels(opened, source, **kwargs)
        n_after = opened.store.query("SELECT COUNT(*) AS n FROM annotations")[0]["n"]
    assert expected in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)
    assert n_after == n_before
    assert state_digest(ctx.project) == before


def test_cli_reports_one_line_and_exit_code_2(
    ctx: Ctx, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = state_digest(ctx.project)
    source = _bob(ctx, tmp_path, np.full((32, 32), 7, np.uint8))
    assert main(["round", "import", str(ctx.project), "--from", str(source)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are neither class values" in err
    assert main(["round", "import", str(tmp_path / "nowhere"), "--from", str(source)]) == 2
    assert "does not exist; create a project there" in capsys.readouterr().err
    assert main(["round", "import", str(tmp_path), "--from", str(source)]) == 2
    assert "is not an alframe labelling project" in capsys.readouterr().err
    assert state_digest(ctx.project) == before


def test_import_before_any_round_is_refused(tmp_path: Path) -> None:
    from test_annotate_support import synthetic_recipe

    from alframe.annotate import init_project
    from alframe.errors import StateError

    init_project(tmp_path / "p", synthetic_recipe(tmp_path))
    (tmp_path / "m").mkdir()
    with open_project(tmp_path / "p") as opened, pytest.raises(StateError, match="round next"):
        import_labels(opened, tmp_path / "m")


# ------------------------------------------------------------------ issue 17: commands, folders
def _project_with_recipe_budget(tmp_path: Path, budget: int) -> Path:
    from test_annotate_support import synthetic_recipe

    from alframe.annotate import init_project
    from alframe.config import recipe_from_dict, recipe_to_dict

    raw = recipe_to_dict(synthetic_recipe(tmp_path))
    raw["select"]["budget"] = budget
    init_project(tmp_path / "p", recipe_from_dict(raw))
    return tmp_path / "p"


def test_budget_zero_is_refused_and_opens_no_round(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The recipe has a budget, so a falsy-zero check would silently use it and open a round.
    project = _project_with_recipe_budget(tmp_path, budget=3)
    before = state_digest(project)
    assert main(["round", "next", str(project), "--budget", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--budget 0" in err and "no round was opened" in err
    assert state_digest(project) == before
    with open_project(project, write=False) as opened:
        assert opened.round_numbers() == []


def test_a_regular_file_given_as_the_project_is_named_a_file(
    ctx: Ctx, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alframe.config import dump_recipe, load_recipe

    file = tmp_path / "notes.txt"
    file.write_text("not a project")
    recipe_file = tmp_path / "recipe.yaml"
    with open_project(ctx.project, write=False) as opened:
        recipe_file.write_text(dump_recipe(opened.recipe))
    load_recipe(recipe_file)  # the recipe itself is fine
    assert main(["project", "init", str(file), "--recipe", str(recipe_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err
    assert main(["project", "init", str(file / "sub"), "--recipe", str(recipe_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create the project folder" in err
    for command in (["round", "status"], ["round", "next"], ["round", "train"]):
        assert main([*command, str(file)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a file, not a project folder" in err, err
        assert "does not exist" not in err
    assert main(["round", "import", str(file), "--from", str(tmp_path)]) == 2
    assert "is a file, not a project folder" in capsys.readouterr().err
    assert file.read_text() == "not a project"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alframe.cli.main", *args]


def _run_on_read_only(
    project: Path, commands: list[list[str]]
) -> list[subprocess.CompletedProcess[str]]:
    """Run CLI commands while ``project`` cannot be written by them.

    A normal user gets ``chmod -R a-w`` (restored afterwards). Root ignores file modes, so for
    root the commands run in a private mount namespace where ``project`` is a read-only bind
    mount (EROFS, which stops root too); where that is impossible the test is skipped.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [project, *project.rglob("*")]}
        try:
            for path in modes:
                path.chmod(modes[path] & ~0o222)
            return [
                subprocess.run(_cli(*c), env=env, capture_output=True, text=True, check=False)
                for c in commands
            ]
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
    if shutil.which("unshare") is None:
        pytest.skip("running as root (chmod does not stop root) and `unshare` is not available")
    mount = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"{mount}", str(project), "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(
            "running as root (chmod does not stop root) and no read-only bind mount is possible "
            f"here: {probe.stderr.strip()}"
        )
    return [
        subprocess.run(
            ["unshare", "--mount", "sh", "-c", mount, str(project), *_cli(*c)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        for c in commands
    ]


def test_read_only_project_reads_and_refuses_writes(ctx: Ctx, tmp_path: Path) -> None:
    project = copy_project(ctx.project, ctx.tmp / "read_only_project")  # beside the data
    masks = _bob(ctx, tmp_path, ctx.good())
    before = state_digest(project)
    p = str(project)
    reading = [["round", "status", p], ["round", "status", p, "--json"]]
    writing = [
        ["round", "next", p, "--budget", "2"],
        ["round", "import", p, "--from", str(masks)],
        ["round", "train", p, "--no-track"],
        ["round", "pseudolabel", p],
    ]
    export = ["export", "nnunet", p, str(tmp_path / "nnunet")]
    results = _run_on_read_only(project, [*reading, export, *writing])
    for command, result in zip([*reading, export], results, strict=False):
        assert result.returncode == 0, (command, result.stderr)
    with open_project(project, write=False) as opened:
        pool = len(opened.item_ids())
    assert f"pool {pool}:" in results[0].stdout
    assert json.loads(results[1].stdout)["pool"] == pool
    assert (tmp_path / "nnunet").is_dir()
    for command, result in zip(writing, results[3:], strict=True):
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.count("\n") == 1, (command, result.stderr)
        assert "the project is read-only" in result.stderr, (command, result.stderr)
    assert state_digest(project) == before


def test_budget_clipped_to_the_pool_is_one_plain_note(ctx: Ctx, tmp_path: Path) -> None:
    from alframe.config import dump_recipe

    project = copy_project(ctx.project, ctx.tmp / "clipped_project")  # beside the data
    recipe = tmp_path / "recipe.yaml"
    with open_project(project, write=False) as opened:
        recipe.write_text(dump_recipe(opened.recipe))
        left = len(opened.item_ids()) - len(opened.store.query("SELECT id FROM selections"))
        pool = len(opened.item_ids())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = {
        f"only {left} items were left to select (asked for 500)": _cli(
            "round", "next", str(project), "--budget", "500"
        ),
        f"note: budget 500 exceeds the {pool} unlabelled items; selecting all {pool}": _cli(
            "select",
            "--recipe",
            str(recipe),
            "--budget",
            "500",
            "--strategy",
            "random",
            "--out",
            str(tmp_path / "selection.csv"),
        ),
    }
    for expected, command in commands.items():
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        output = result.stdout + result.stderr
        assert output.count(expected) == 1, output
        assert "Warning" not in output and ".py:" not in output, output
        assert sum("exceeds" in line or "were left" in line for line in output.splitlines()) == 1


def test_brush_rle_header_is_checked_before_allocating() -> None:
    import tracemalloc

    from alframe.annotate import decode_brush_rle
    from alframe.errors import DataError

    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="holds 4294967295 values but a 32×32 RGBA image"):
            decode_brush_rle(_huge_rle(), "t", image_size=(32, 32))
        # Without the image size the stream's own length bounds the count.
        with pytest.raises(DataError, match="truncated or damaged"):
            decode_brush_rle(_huge_rle(), "t")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak  # the declared 2**32 - 1 int64 values would be 32 GiB
    region = _region()
    rgba = np.repeat(region.ravel().astype(np.int64) * 255, 4)
    assert np.array_equal(decode_brush_rle(encode_brush_rle(rgba), image_size=(32, 32)), rgba)


@pytest.mark.parametrize("damage", ["garbage bytes", "valid png, other content"])
def test_export_with_a_damaged_stored_label_exports_nothing(
    ctx: Ctx, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    project = copy_project(ctx.project, ctx.tmp / f"damaged_{damage.split()[0]}")
    with open_project(project, write=False) as opened:
        files = sorted(opened.label_files().values())
    assert len(files) >= 2
    victim = files[len(files) // 2]  # cases before it are written first
    if damage == "garbage bytes":
        victim.write_bytes(victim.read_bytes()[:40] + b"\0" * 64)
    else:
        labels = np.asarray(Image.open(victim)).copy()
        labels[0, 0] = 1 - min(int(labels[0, 0]), 1)
        Image.fromarray(labels).save(victim)
    before = state_digest(project)
    out = tmp_path / "nnUNet_raw"
    out.mkdir()
    assert main(["export", "nnunet", str(project), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stored label is damaged" in err, err
    assert "nothing was exported" in err
    assert list(out.iterdir()) == []  # no data set, no .partial folder
    assert state_digest(project) == before
