import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("STEPNORM_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """../shared/data/real (third-party datasets); tests using it skip when it is absent."""
    if not REAL_DATA.exists():
        pytest.skip(f"real datasets not found at {REAL_DATA} (set STEPNORM_REAL_DATA); generated-data tests cover every feature")
    return REAL_DATA


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The built-in sample mixture (two small TFDS datasets + config), written once per session.

    Read-only for tests: copy it (or write another) before changing anything in it.
    """
    from stepnorm.demo_data import write_sample

    out = tmp_path_factory.mktemp("sample")
    write_sample(out)
    return out


@pytest.fixture(autouse=True, scope="session")
def _values_cache(tmp_path_factory):
    """Tests never write to the user's cache: the values cache lives in the session's tmp dir."""
    os.environ["STEPNORM_CACHE"] = str(tmp_path_factory.mktemp("stepnorm-cache"))
    yield
