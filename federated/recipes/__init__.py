"""The recipe registry: the only models and data a project can ask a contributor to train."""

from __future__ import annotations

from federated.errors import RecipeError
from federated.recipes.base import COMMON_HPARAMS, Dataset, HParamValue, HyperParam, Recipe
from federated.recipes.digits import DigitsCNN, DigitsMLP
from federated.recipes.lm import ByteLM
from federated.recipes.synthetic import SyntheticLogReg
from federated.recipes.tabular import TabularCSV

RECIPES: dict[str, type[Recipe]] = {
    cls.name: cls for cls in (DigitsMLP, DigitsCNN, SyntheticLogReg, TabularCSV, ByteLM)
}


def get_recipe(name: str) -> Recipe:
    """The recipe registered under ``name``; RecipeError lists the known ones otherwise."""
    try:
        return RECIPES[name]()
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}") from None


__all__ = [
    "COMMON_HPARAMS",
    "RECIPES",
    "Dataset",
    "HParamValue",
    "HyperParam",
    "Recipe",
    "get_recipe",
]
