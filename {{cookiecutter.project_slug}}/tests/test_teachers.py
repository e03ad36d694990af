"""What pseudo-labelling and distillation share: the teachers they accept (students/teachers.py)."""

import pytest

from {{ cookiecutter.package_name }}.core.errors import UserError
from {{ cookiecutter.package_name }}.students import distill, pseudo

from conftest import fingerprint_teacher, on_other_folds, small_config, spy_on_training


def quiet(line: str) -> None:
    pass


STUDENTS = {
    "pseudo": lambda cfg, names: pseudo.run_pseudo(cfg, names[0] if names else "", log=quiet),
    "distill": lambda cfg, names: distill.run_distill(cfg, names, log=quiet),
}


@pytest.mark.parametrize("kind", list(STUDENTS))
def test_teachers_that_would_leak_or_do_not_exist_are_refused(small_project, monkeypatch, kind):
    cfg = small_config(small_project, f"refuse_{kind}")
    fingerprint_teacher(cfg, "fp_other_folds")
    on_other_folds(cfg, "fp_other_folds")  # its fold-k models saw the student's fold-k validation rows
    spy_on_training(monkeypatch)
    run = STUDENTS[kind]
    with pytest.raises(UserError, match="folds hash"):
        run(cfg, ["fp_other_folds"])
    with pytest.raises(UserError, match="not_trained"):
        run(cfg, ["not_trained"])
    with pytest.raises(UserError, match="a teacher"):
        run(cfg, [])
    with pytest.raises(UserError, match="its own teacher"):
        run(cfg, [cfg.exp])
