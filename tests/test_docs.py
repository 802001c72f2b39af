"""The documents in the repository stay true: docs/API.md lists every route the OpenAPI
document serves (and no route that is gone), the README points at files that exist."""

from __future__ import annotations

import re

from tests.reconciler_proc import ROOT


async def test_the_api_index_matches_the_openapi_document(api) -> None:
    _, doc = await api.call("GET", "/api/v1/openapi.json", expect=200)
    served = {f"{method.upper()} {path}" for path, item in doc["paths"].items()
              for method in item}
    text = (ROOT / "docs" / "API.md").read_text()
    index = text.split("## Index of routes", 1)[1]
    listed = set(re.findall(r"^\| `([A-Z]+ /[^`]*)`", index, re.M))
    missing = sorted(served - listed)
    assert not missing, ("add to docs/API.md's index (and describe them above):\n"
                         + "\n".join(f"| `{m}` | ... | ... |" for m in missing))
    assert not sorted(listed - served), "routes in docs/API.md that are no longer served"


def test_the_readme_points_at_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), target
    for doc in ("docs/API.md", "docs/DESIGN.md", "docs/runbook.md"):
        assert doc in readme, doc
