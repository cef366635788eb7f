"""`import tfsky` turns off NumPy's huge-page hint (slow fresh allocations on THP ``defrag: madvise``)."""

import os
import subprocess
import sys

import pytest


def _hugepage_hint_after(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"} | env
    result = subprocess.run(
        [sys.executable, "-c", code + "; import numpy; print(numpy._core.multiarray._get_madvise_hugepage())"],
        capture_output=True,
        text=True,
        env=environ,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize("order", ["import tfsky", "import numpy; import tfsky"])
def test_import_turns_off_numpys_huge_page_hint_before_or_after_numpy(order):
    assert _hugepage_hint_after(order) == "False"


def test_a_users_own_huge_page_setting_is_kept():
    assert _hugepage_hint_after("import numpy; import tfsky", NUMPY_MADVISE_HUGEPAGE="1") == "True"
    assert _hugepage_hint_after("import tfsky", NUMPY_MADVISE_HUGEPAGE="1") == "True"
