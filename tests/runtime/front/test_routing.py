"""Router: which script and route answer a (method, host, path), and which methods a 405 lists."""

from typing import Any

from runtime.config import AppConfig, load_app
from runtime.front.routing import Route, Router
from tests.support import write_app


def router(*scripts: tuple[str, list[Any]]) -> Router:
    """A Router over scripts given as (name, routes); routes are strings or route tables."""
    return Router(AppConfig.model_validate(
        {"scripts": [{"name": name, "main": f"{name}.py", "routes": routes} for name, routes in scripts]}
    ))


def hit(r: Router, path: str, method: str = "GET", host: str = "example.com") -> tuple[str, dict[str, str]] | None:
    """The matched route's pattern and captures, or None."""
    found = r.match(method, host, path)
    return None if found is None else (found[0].config.pattern, found[1])


def test_exact_path_matches_only_itself():
    r = router(("app", ["/hello", "/a.b"]))
    assert hit(r, "/hello") == ("/hello", {})
    assert hit(r, "/hello/") is None
    assert hit(r, "/hello/x") is None
    assert hit(r, "/hell") is None
    assert hit(r, "/a.b") == ("/a.b", {})
    assert hit(r, "/aXb") is None  # literal characters are not regex syntax


def test_exact_path_with_other_method_falls_through_to_a_wildcard():
    r = router(("app", [{"pattern": "/hello", "methods": ["GET"]}, "/*"]))
    assert hit(r, "/hello", "GET") == ("/hello", {})
    assert hit(r, "/hello", "POST") == ("/*", {})


def test_star_matches_any_run_of_characters_including_slashes():
    r = router(("app", ["/static/*", "/a/*/z"]))
    assert hit(r, "/static/") == ("/static/*", {})
    assert hit(r, "/static/css/site.css") == ("/static/*", {})
    assert hit(r, "/a/b/c/z") == ("/a/*/z", {})
    assert hit(r, "/static") is None
    assert hit(r, "/a/b/c/z/more") is None  # the pattern is anchored at the end


def test_capture_takes_exactly_one_segment():
    r = router(("app", ["/users/{id}", "/orgs/{org}/repos/{repo}"]))
    assert hit(r, "/users/42") == ("/users/{id}", {"id": "42"})
    assert hit(r, "/orgs/acme/repos/rocket") == ("/orgs/{org}/repos/{repo}", {"org": "acme", "repo": "rocket"})
    assert hit(r, "/users/42/posts") is None
    assert hit(r, "/users/") is None


def test_host_pattern_matches_host_and_path():
    r = router(("app", ["example.com/*", "*.example.org/api/*"]))
    assert hit(r, "/anything", host="example.com") == ("example.com/*", {})
    assert hit(r, "/api/v1", host="eu.example.org") == ("*.example.org/api/*", {})
    assert hit(r, "/anything", host="other.com") is None
    assert hit(r, "/api/v1", host="example.org") is None
    assert hit(r, "/other", host="eu.example.org") is None


def test_path_only_pattern_ignores_the_host():
    r = router(("app", ["/hello", "/files/*"]))
    for host in ("example.com", "other.net", ""):
        assert hit(r, "/hello", host=host) == ("/hello", {})
        assert hit(r, "/files/x", host=host) == ("/files/*", {})


def test_most_literal_characters_win_regardless_of_declaration_order():
    r = router(("app", ["/*", "/api/*", "/api/users/*", "/api/users/{id}/avatar"]))
    assert hit(r, "/x") == ("/*", {})
    assert hit(r, "/api/things") == ("/api/*", {})
    assert hit(r, "/api/users/7") == ("/api/users/*", {})
    assert hit(r, "/api/users/7/avatar") == ("/api/users/{id}/avatar", {"id": "7"})


def test_host_pattern_with_more_literal_characters_beats_path_pattern():
    r = router(("app", ["/api/users/*", "example.com/api/*"]))
    assert hit(r, "/api/users/1", host="example.com") == ("example.com/api/*", {})
    assert hit(r, "/api/users/1", host="other.com") == ("/api/users/*", {})


def test_more_specific_host_pattern_beats_exact_path():
    r = router(("app", ["/hello", "example.com/hello"]))
    assert hit(r, "/hello", host="example.com") == ("example.com/hello", {})


def test_route_with_methods_beats_route_without_at_equal_specificity():
    r = router(("app", ["/items/*", {"pattern": "/items/{id}", "methods": ["POST"]}]))
    assert hit(r, "/items/9", "POST") == ("/items/{id}", {"id": "9"})
    assert hit(r, "/items/9", "GET") == ("/items/*", {})


def test_methods_filter_and_are_case_insensitive_in_the_manifest():
    r = router(("app", [{"pattern": "/form", "methods": ["get", "post"]}]))
    assert hit(r, "/form", "GET") == ("/form", {})
    assert hit(r, "/form", "POST") == ("/form", {})
    assert hit(r, "/form", "DELETE") is None


def test_allowed_methods_lists_methods_of_every_matching_route():
    r = router(
        ("app", [{"pattern": "/doc/{id}", "methods": ["GET", "HEAD"]}, {"pattern": "/doc/*", "methods": ["PUT"]}]),
    )
    assert hit(r, "/doc/1", "DELETE") is None
    assert sorted(r.allowed_methods("example.com", "/doc/1")) == ["GET", "HEAD", "PUT"]
    assert r.allowed_methods("example.com", "/doc/1/x") == ["PUT"]
    assert r.allowed_methods("example.com", "/elsewhere") == []


def test_allowed_methods_honours_host_patterns():
    r = router(("app", [{"pattern": "api.example.com/*", "methods": ["POST"]}]))
    assert r.allowed_methods("api.example.com", "/x") == ["POST"]
    assert r.allowed_methods("example.com", "/x") == []


def test_no_match_is_none():
    r = router(("app", ["/a", "/b/*", "example.com/c"]))
    assert r.match("GET", "example.com", "/zzz") is None
    assert r.match("GET", "other.com", "/c") is None


def test_index_is_position_in_the_scripts_route_list():
    r = router(
        ("one", ["/a", "/b/*", {"pattern": "/c", "methods": ["GET"]}]),
        ("two", ["/d/{x}", "/e"]),
    )
    found: dict[str, Route] = {}
    for path in ("/a", "/b/q", "/c", "/d/q", "/e"):
        m = r.match("GET", "example.com", path)
        assert m is not None
        found[path] = m[0]
    assert [(found[p].script, found[p].index) for p in ("/a", "/b/q", "/c", "/d/q", "/e")] == [
        ("one", 0), ("one", 1), ("one", 2), ("two", 0), ("two", 1),
    ]
    assert found["/c"].config.methods == ["GET"]


def test_routes_of_two_scripts_dispatch_to_their_script():
    r = router(
        ("site", ["/*", {"pattern": "/shared", "methods": ["GET"]}]),
        ("api", ["/api/*", {"pattern": "/shared", "methods": ["POST"]}]),
    )
    def script(path: str, method: str = "GET") -> str | None:
        m = r.match(method, "example.com", path)
        return None if m is None else m[0].script

    assert script("/index.html") == "site"
    assert script("/api/users") == "api"
    assert script("/shared", "GET") == "site"
    assert script("/shared", "POST") == "api"
    assert script("/shared", "PUT") == "site"  # falls through to site's "/*"


def test_router_from_a_loaded_manifest(tmp_path):
    write_app(tmp_path, """
        [[scripts]]
        name = "web"
        main = "web.py"
        routes = ["/", {pattern = "/api/{version}/*", methods = ["get"]}]
    """, {"web.py": "async def fetch(request, env, ctx):\n    pass\n"})
    r = Router(load_app(tmp_path))
    assert hit(r, "/") == ("/", {})
    assert hit(r, "/api/v2/users") == ("/api/{version}/*", {"version": "v2"})
    assert hit(r, "/api/v2/users", "POST") is None
    assert r.allowed_methods("example.com", "/api/v2/users") == ["GET"]
