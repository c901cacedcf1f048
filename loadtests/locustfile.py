"""Locust users for the example app in functions/ (run through `edgeworks load`)."""

from locust import FastHttpUser, between, task


class ExampleAppUser(FastHttpUser):
    wait_time = between(0.0, 0.05)

    @task(10)
    def hello(self) -> None:
        self.client.get("/hello")

    @task(3)
    def echo(self) -> None:
        with self.client.post("/echo", json={"n": 1, "s": "load"}, catch_response=True) as r:
            if r.status_code != 200 or r.json() != {"n": 1, "s": "load"}:
                r.failure(f"echo returned {r.status_code}: {r.text[:100]}")

    @task(1)
    def spin(self) -> None:
        self.client.get("/spin?ms=2", name="/spin?ms=2")
