"""Declared route schemas: an invalid request gets 422 with field errors and the handler never
runs; a valid one reaches the handler with the validated model."""

import pytest

from tests.support import Server, run_cli, write_app

MANIFEST = """
[[scripts]]
name = "app"
main = "app.py"
routes = [
    { pattern = "/orders", methods = ["POST"], body_model = "Order", query_model = "schemas:Paging" },
    "/calls",
]
"""

APP = '''
from pydantic import BaseModel, Field
from workers import Response

CALLS = []

class Order(BaseModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(gt=0)

async def fetch(request, env, ctx):
    if request.path == "/calls":
        return Response.json(CALLS)
    CALLS.append(request.validated.sku)
    return Response.json({"order": request.validated.model_dump(), "page": request.validated_query.page})
'''

SCHEMAS = '''
from pydantic import BaseModel

class Paging(BaseModel):
    page: int = 1
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = write_app(tmp_path_factory.mktemp("schema") / "app", MANIFEST, {"app.py": APP, "schemas.py": SCHEMAS})
    with Server(app) as s:
        yield s


def test_valid_request_reaches_the_handler_with_the_model(server):
    with server.client() as c:
        r = c.post("/orders?page=2", json={"sku": "A-1", "quantity": 3})
    assert r.status_code == 200
    assert r.json() == {"order": {"sku": "A-1", "quantity": 3}, "page": 2}


@pytest.mark.parametrize("body,query,where", [
    ({"sku": "", "quantity": 3}, "", ["body", "sku"]),
    ({"sku": "A", "quantity": 0}, "", ["body", "quantity"]),
    ({"sku": "A"}, "", ["body", "quantity"]),
    ({"sku": "A", "quantity": 1}, "?page=two", ["query", "page"]),
])
def test_invalid_request_is_422_with_field_errors_and_the_handler_is_not_called(server, body, query, where):
    with server.client() as c:
        before = c.get("/calls").json()
        r = c.post(f"/orders{query}", json=body)
        after = c.get("/calls").json()
    assert r.status_code == 422
    data = r.json()
    assert data["error"] == "validation_error" and data["request_id"] == r.headers["x-request-id"]
    assert [[e["in"], *e["loc"]] for e in data["errors"]] == [where]
    assert after == before


def test_malformed_json_is_422(server):
    with server.client() as c:
        r = c.post("/orders", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["type"] == "json_invalid"


def test_a_route_model_that_is_not_a_pydantic_model_is_a_load_error(tmp_path):
    app = write_app(tmp_path / "app", MANIFEST, {"app.py": APP.replace("class Order(BaseModel)", "class Order"),
                                                  "schemas.py": SCHEMAS})
    out = run_cli("serve", str(app), "--port", "0", "--state-dir", str(tmp_path / "state"))
    assert out.returncode == 3
    assert "route model 'Order' is not a pydantic model" in out.stderr
