"""Heroes: the write-only secret name, the indexed filters, and the field rules."""

from __future__ import annotations

import httpx
import pytest


async def test_secret_name_is_accepted_but_never_returned(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/heroes", json={"name": "Deadpond", "secret_name": "Dive Wilson", "age": 32}
    )
    assert created.status_code == 201
    location = created.headers["location"]
    patched = await client.patch(location, json={"secret_name": "Someone Else"})
    assert patched.status_code == 200
    assert patched.json()["version"] == 2
    responses = [
        created,
        patched,
        await client.get(location),
        await client.get("/heroes"),
        await client.get("/heroes", params={"name": "Deadpond"}),
        await client.get("/openapi.json"),
    ]
    for response in responses[:-1]:
        assert "secret_name" not in response.text
        assert "Dive Wilson" not in response.text
        assert "Someone Else" not in response.text
    read_schema = responses[-1].json()["components"]["schemas"]["HeroRead"]
    assert "secret_name" not in read_schema["properties"]


async def test_filters_by_exact_name_prefix_and_age(client: httpx.AsyncClient) -> None:
    heroes = [
        ("Spider-Boy", 16),
        ("Spider-Youngster", None),
        ("spider-lower", 20),
        ("Rusty-Man", 48),
        ("Captain North America", 93),
        ("100%_Hero", 1),
    ]
    for name, age in heroes:
        body = {"name": name, "secret_name": "s", "age": age}
        assert (await client.post("/heroes", json=body)).status_code == 201

    async def names(**params: object) -> list[str]:
        page = await client.get("/heroes", params=params)  # type: ignore[arg-type]
        assert page.status_code == 200, page.text
        return [row["name"] for row in page.json()["data"]]

    assert await names(name="Rusty-Man") == ["Rusty-Man"]
    assert await names(name="rusty-man") == []
    assert await names(name_prefix="Spider") == ["Spider-Boy", "Spider-Youngster"]
    assert await names(name_prefix="100%") == ["100%_Hero"]
    assert await names(name_prefix="1%") == []
    assert await names(min_age=18) == ["spider-lower", "Rusty-Man", "Captain North America"]
    assert await names(min_age=16, max_age=20) == ["Spider-Boy", "spider-lower"]
    assert await names(name_prefix="Spider", max_age=17) == ["Spider-Boy"]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x"},
        {"secret_name": "x"},
        {"name": "", "secret_name": "x"},
        {"name": "x", "secret_name": ""},
        {"name": "x" * 101, "secret_name": "x"},
        {"name": "x", "secret_name": "x" * 101},
        {"name": "x", "secret_name": "x", "age": -1},
        {"name": "x", "secret_name": "x", "age": 10001},
        {"name": "x", "secret_name": "x", "age": 2**70},
        {"name": "x", "secret_name": "x", "age": "old"},
        {"name": "x", "secret_name": "x", "age": 3.5},
        {"name": "x", "secret_name": "x", "power": "flight"},
    ],
)
async def test_invalid_heroes_are_422(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    response = await client.post("/heroes", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"]


async def test_age_boundaries_and_clearing(client: httpx.AsyncClient) -> None:
    for age in (0, 10000):
        body = {"name": "Edge", "secret_name": "s", "age": age}
        assert (await client.post("/heroes", json=body)).status_code == 201
    location = "/heroes/1"
    cleared = await client.patch(location, json={"age": None})
    assert cleared.json()["age"] is None
    assert (await client.patch(location, json={"secret_name": None})).status_code == 422


@pytest.mark.parametrize(
    "params",
    [{"min_age": 50, "max_age": 10}, {"min_age": -1}, {"max_age": "x"}, {"name": "n" * 101}],
)
async def test_bad_filters_are_422(client: httpx.AsyncClient, params: dict[str, object]) -> None:
    response = await client.get("/heroes", params=params)  # type: ignore[arg-type]
    assert response.status_code == 422
