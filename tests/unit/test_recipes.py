from __future__ import annotations

from pathlib import Path

import pytest
import torch

from federated.errors import DataError, RecipeError
from federated.recipes import RECIPES, get_recipe
from federated.training import load_state_into


def test_registry_lists_the_builtin_recipes() -> None:
    assert set(RECIPES) == {
        "digits-mlp",
        "digits-cnn",
        "synthetic-logreg",
        "tabular-csv",
        "byte-lm",
    }
    with pytest.raises(RecipeError, match="unknown recipe 'nope'; known: byte-lm, digits-cnn"):
        get_recipe("nope")


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn", "synthetic-logreg", "byte-lm"])
def test_builtin_recipe_is_seeded_and_consistent(name: str) -> None:
    recipe = get_recipe(name)
    hp = recipe.resolve_hparams({"seed": 7, "num_shards": 5})
    a, b = recipe.initial_state(hp), recipe.initial_state(hp)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = recipe.initial_state(recipe.resolve_hparams({"seed": 8, "num_shards": 5}))
    assert any(not torch.equal(a[k], other[k]) for k in a)
    spec = recipe.tensor_spec(hp)
    assert {k: (tuple(v.shape), v.dtype) for k, v in a.items()} == dict(spec)
    shard = recipe.load_shard(hp, 0)
    test = recipe.load_test(hp)
    assert test is not None and len(shard) > 0 and len(test) > 0
    model = recipe.build_model(hp)
    load_state_into(model, a)
    metrics = recipe.evaluate(model, test)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["examples"] == len(test)
    assert recipe.flops_per_example(hp) > 0


def test_digits_test_split_is_fixed_and_disjoint_from_training() -> None:
    recipe = get_recipe("digits-mlp")
    hp_a = recipe.resolve_hparams({"seed": 1, "num_shards": 3})
    hp_b = recipe.resolve_hparams({"seed": 99, "num_shards": 7})
    test_a, test_b = recipe.load_test(hp_a), recipe.load_test(hp_b)
    assert test_a is not None and test_b is not None
    assert torch.equal(test_a.features, test_b.features)
    train = torch.cat([recipe.load_shard(hp_a, i).features for i in range(3)])
    train_rows = {tuple(r.tolist()) for r in train}
    overlap = sum(tuple(r.tolist()) in train_rows for r in test_a.features)
    assert overlap < 0.05 * len(test_a)  # digits has a few exact duplicate images, nothing more
    assert len(train) + len(test_a) == 1797


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lr": -1}, "'lr': -1.0 is below the minimum"),
        ({"lr": "fast"}, "'lr': 'fast' is not a valid float"),
        ({"optimizer": "lion"}, "'optimizer': 'lion' is not one of sgd, adamw"),
        ({"batch_size": 2.5}, "'batch_size': 2.5 is not a valid int"),
        ({"learning_rate": 0.1}, "no hyperparameter 'learning_rate'"),
        ({"partition": "dirichlet:-2"}, "'partition': dirichlet alpha must be a positive"),
        ({"lr": float("nan")}, "NaN is not allowed"),
    ],
)
def test_bad_hyperparameters_are_named(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeError, match=message.replace("(", r"\(")):
        get_recipe("digits-mlp").resolve_hparams(overrides)


def test_synthetic_devices_differ_and_are_reproducible() -> None:
    recipe = get_recipe("synthetic-logreg")
    hp = recipe.resolve_hparams({"num_shards": 4, "seed": 3})
    a0, a1 = recipe.load_shard(hp, 0), recipe.load_shard(hp, 1)
    assert not torch.equal(a0.features[:5], a1.features[:5])
    assert torch.equal(recipe.load_shard(hp, 0).features, a0.features)
    with pytest.raises(ValueError, match="outside"):
        recipe.load_shard(hp, 4)


# --- tabular-csv: the participant's own file ---------------------------------------------------

HP = {"label_column": "y", "feature_columns": "a, b", "num_classes": 3}


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_tabular_reads_a_good_file_and_folder(tmp_path: Path) -> None:
    recipe = get_recipe("tabular-csv")
    hp = recipe.resolve_hparams(HP)
    write(tmp_path, "a,b,y,notes\n1,2,0,x\n3.5,-1,2,y\n\n")
    write(tmp_path, "y,b,a\n1,0,0\n", name="more.csv")
    data = recipe.load_shard(hp, 0, data_path=str(tmp_path))
    assert data.features.tolist() == [[1.0, 2.0], [3.5, -1.0], [0.0, 0.0]]
    assert data.labels.tolist() == [0, 2, 1]
    assert recipe.load_test(hp) is None
    assert recipe.data_mode == "local"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ("a,b,y\n", "no data rows"),
        ("a,y\n1,0\n", "line 1: column 'b' not found; the header has a, y"),
        ("a,b,y\n1,2,0\n1,oops,1\n", "line 3, column 'b': 'oops' is not a number"),
        ("a,b,y\n1,,0\n", r"line 2, column 'b': '\(empty\)' is not a number"),
        ("a,b,y\n1,inf,0\n", "line 2, column 'b': 'inf' is not a finite number"),
        ("a,b,y\n1,2,7\n", "line 2, column 'y': label '7' is not a class number in 0..2"),
        ("a,b,y\n1,2,0.5\n", "line 2, column 'y': label '0.5'"),
        ("a,b,y\n1,2\n", "line 2: 2 fields, but the header has 3"),
    ],
)
def test_tabular_bad_files_name_file_line_and_column(
    tmp_path: Path, content: str, message: str
) -> None:
    recipe = get_recipe("tabular-csv")
    path = write(tmp_path, content)
    with pytest.raises(DataError, match=message) as info:
        recipe.load_shard(recipe.resolve_hparams(HP), 0, data_path=str(path))
    assert str(path) in str(info.value)


def test_tabular_missing_path_and_bad_config(tmp_path: Path) -> None:
    recipe = get_recipe("tabular-csv")
    hp = recipe.resolve_hparams(HP)
    with pytest.raises(DataError, match="no such file"):
        recipe.load_shard(hp, 0, data_path=str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="holds no .csv files"):
        recipe.load_shard(hp, 0, data_path=str(tmp_path))
    with pytest.raises(DataError, match="choose a CSV"):
        recipe.load_shard(hp, 0)
    with pytest.raises(RecipeError, match="name at least one feature column"):
        recipe.resolve_hparams({"label_column": "y"})
    with pytest.raises(RecipeError, match="label is also a feature"):
        recipe.resolve_hparams({"label_column": "a", "feature_columns": "a,b"})


def test_bundled_digits_file_equals_scikit_learns() -> None:
    from sklearn.datasets import load_digits

    from federated.recipes.digits import load_digits_arrays

    pixels, labels = load_digits_arrays()
    reference = load_digits()
    assert (pixels == reference.data).all() and (labels == reference.target).all()
