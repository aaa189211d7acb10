import pytest

from tests.conftest import upstream_build_error


@pytest.fixture(autouse=True)
def _upstream_built():
    if upstream_build_error:
        pytest.fail(f"upstream programs could not be built: {upstream_build_error[0]}")
