"""Real Kaggle competition titles, given as the only answer under --no-input, render: the competition id is derived
from the title as a Kaggle slug (lowercase ASCII, accents dropped, every run of other characters one hyphen, none at
either end, at most 60 characters cut at a word boundary), and the project folder and package follow from it."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import ROOT, kaggle_slug, package_of, render

# Titles as kaggle.com shows them: dashes of three widths, colons, parentheses, '&', '+', '/', dots, digits (one
# leading), accents, and two titles longer than 60 characters once slugged.
TITLES = [
    "HMS - Harmful Brain Activity Classification",
    "RSNA 2024 Lumbar Spine Degenerative Classification",
    "UBC Ovarian Cancer Subtype Classification and Outlier Detection (UBC-OCEAN)",
    "Happywhale - Whale and Dolphin Identification",
    "Jigsaw Rate Severity of Toxic Comments",
    "Planet: Understanding the Amazon from Space",
    "Corporación Favorita Grocery Sales Forecasting",
    "H&M Personalized Fashion Recommendations",
    "Intel & MobileODT Cervical Cancer Screening",
    "2019 Data Science Bowl",
    "SIIM-ISIC Melanoma Classification",
    "Severstal: Steel Defect Detection",
    "Dogs vs. Cats Redux: Kernels Edition",
    "Bristol-Myers Squibb \u2013 Molecular Translation",
    "Child Mind Institute \u2014 Problematic Internet Use",
    "Mechanisms of Action (MoA) Prediction",
    "Google Research - Identify Contrails to Reduce Global Warming",
    "ISIC 2024 - Skin Cancer Detection with 3D-TBP",
    "HuBMAP + HPA - Hacking the Human Body",
    "Peking University/Baidu - Autonomous Driving",
    "PetFinder.my - Pawpularity Contest",
    "Don't Overfit! II",
]
# Spelled out for a few, so that the rule itself is checked, not only the two implementations against each other.
# Several are the competitions' real slugs (Planet, Intel, SIIM-ISIC, Severstal, Dogs vs. Cats, Bristol-Myers Squibb).
EXPECTED = {
    "HMS - Harmful Brain Activity Classification": "hms-harmful-brain-activity-classification",
    "RSNA 2024 Lumbar Spine Degenerative Classification": "rsna-2024-lumbar-spine-degenerative-classification",
    # 75 characters slugged: cut after the last whole word that fits in 60
    "UBC Ovarian Cancer Subtype Classification and Outlier Detection (UBC-OCEAN)": (
        "ubc-ovarian-cancer-subtype-classification-and-outlier"
    ),
    "Planet: Understanding the Amazon from Space": "planet-understanding-the-amazon-from-space",
    "Corporación Favorita Grocery Sales Forecasting": "corporacion-favorita-grocery-sales-forecasting",
    "Intel & MobileODT Cervical Cancer Screening": "intel-mobileodt-cervical-cancer-screening",
    "Dogs vs. Cats Redux: Kernels Edition": "dogs-vs-cats-redux-kernels-edition",
    "Bristol-Myers Squibb \u2013 Molecular Translation": "bristol-myers-squibb-molecular-translation",
    "2019 Data Science Bowl": "2019-data-science-bowl",
}
SLUG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def test_the_reference_slug_follows_the_rule():
    for title, slug in EXPECTED.items():
        assert kaggle_slug(title) == slug, title
    assert len(TITLES) >= 20 and len(set(TITLES)) == len(TITLES)


@pytest.mark.parametrize("title", TITLES)
def test_a_real_title_alone_renders(tmp_path, cookiecutter_config, title):
    project = render(str(ROOT), tmp_path, {"competition_name": title}, cookiecutter_config)
    answers = json.loads((project / ".cookiecutter.json").read_text(encoding="utf-8"))["cookiecutter"]
    slug = answers["competition_id"]
    assert SLUG.fullmatch(slug) and len(slug) <= 60, slug
    assert slug == EXPECTED.get(title, kaggle_slug(title))
    assert project.name == answers["project_slug"] == slug
    package = answers["package_name"]
    assert package == package_of(slug) and package.isidentifier(), package
    assert (project / "src" / package / "__init__.py").is_file()
    exp001 = yaml.safe_load((project / "configs" / "exp001.yaml").read_text(encoding="utf-8"))
    assert (exp001["competition"], exp001["data"]["dir"]) == (slug, f"data/{slug}")
    assert answers["competition_name"] == title
