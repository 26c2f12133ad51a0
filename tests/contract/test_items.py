"""Items: exact money, the list filters, and the field rules of the contract."""

from __future__ import annotations

import httpx
import pytest

PROBLEM = "application/problem+json"


@pytest.mark.parametrize("price", [0.01, 19.99, 1000000000, 999999999.99, 12.3])
async def test_money_round_trips_exactly(client: httpx.AsyncClient, price: float) -> None:
    created = await client.post("/items", json={"name": "Coin", "price": price, "tax": 0})
    assert created.status_code == 201, created.text
    read = (await client.get(created.headers["location"])).json()
    assert read["price"] == price
    assert read["tax"] == 0
    assert (await client.get("/items")).json()["data"][0]["price"] == price


async def test_money_arithmetic_stays_exact(client: httpx.AsyncClient) -> None:
    for price in (0.1, 0.2):
        await client.post("/items", json={"name": "Cent", "price": price})
    exact = await client.get("/items", params={"min_price": "0.3", "max_price": "0.3"})
    assert exact.json()["data"] == []
    cheap = await client.get("/items", params={"max_price": "0.2"})
    assert [row["price"] for row in cheap.json()["data"]] == [0.1, 0.2]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "price": 0},
        {"name": "x", "price": -1},
        {"name": "x", "price": 1.005},
        {"name": "x", "price": 1000000000.01},
        b'{"name": "x", "price": 1e400}',
        b'{"name": "x", "price": -1e400}',
        b'{"name": "x", "price": NaN}',
        {"name": "x", "price": 123456789012345678901234567890},
        {"name": "x", "price": "NaN"},
        {"name": "x", "price": "Infinity"},
        {"name": "x", "price": True},
        {"name": "x", "price": None},
        {"name": "x", "price": 1, "tax": -0.01},
        {"name": "x", "price": 1, "tax": 0.001},
        {"name": "", "price": 1},
        {"name": "x" * 201, "price": 1},
        {"name": "x", "price": 1, "description": "d" * 2001},
        {"name": "x\u0000y", "price": 1},
        {"name": 7, "price": 1},
        {"price": 1},
        {"name": "x"},
        {"name": "x", "price": 1, "id": 99},
        {"name": "x", "price": 1, "version": 5},
        {"name": "x", "price": 1, "secret": True},
    ],
)
async def test_invalid_items_are_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object] | bytes
) -> None:
    if isinstance(body, bytes):
        headers = {"Content-Type": "application/json"}
        response = await client.post("/items", content=body, headers=headers)
    else:
        response = await client.post("/items", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["errors"]
    assert all({"field", "message"} <= set(error) for error in problem["errors"])
    assert (await client.get("/items")).json()["data"] == []


async def test_lone_surrogates_are_refused_not_stored(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/items",
        content=b'{"name": "bad \\ud800 text", "price": 1}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422


async def test_boundaries_are_accepted(client: httpx.AsyncClient) -> None:
    body = {"name": "n" * 200, "description": "d" * 2000, "price": 1000000000, "tax": 0}
    created = await client.post("/items", json=body)
    assert created.status_code == 201
    assert created.json()["description"] == "d" * 2000


async def test_patch_may_clear_optional_fields_but_not_required_ones(
    client: httpx.AsyncClient,
) -> None:
    created = await client.post(
        "/items", json={"name": "Lamp", "description": "bright", "price": 10, "tax": 1}
    )
    location = created.headers["location"]
    cleared = await client.patch(location, json={"description": None, "tax": None})
    assert cleared.status_code == 200
    assert cleared.json()["description"] is None
    assert cleared.json()["tax"] is None
    assert cleared.json()["name"] == "Lamp"
    for field in ("name", "price"):
        refused = await client.patch(location, json={field: None})
        assert refused.status_code == 422
    assert (await client.get(location)).json()["version"] == 2


async def test_filters_by_name_substring_any_case(client: httpx.AsyncClient) -> None:
    for name in ("Red Lamp", "blue lamp", "Chair", "100% cotton", "snake_case", "back\\slash"):
        await client.post("/items", json={"name": name, "price": 1})

    async def names(**params: str) -> list[str]:
        page = await client.get("/items", params=params)
        assert page.status_code == 200
        return [row["name"] for row in page.json()["data"]]

    assert await names(q="LAMP") == ["Red Lamp", "blue lamp"]
    assert await names(q="0% c") == ["100% cotton"]
    assert await names(q="e_c") == ["snake_case"]
    assert await names(q="k\\s") == ["back\\slash"]
    assert await names(q="%%%") == []
    assert await names(q="___") == []
    assert await names(q="'; DROP TABLE items; --") == []
    assert len(await names()) == 6


async def test_q_compares_letters_of_every_alphabet_in_any_case(client: httpx.AsyncClient) -> None:
    for name in ("ÉCOLE de danse", "Straße", "ΣΟΦΙΑ", "Ёлка", "ecole"):
        await client.post("/items", json={"name": name, "price": 1})

    async def names(q: str) -> list[str]:
        page = await client.get("/items", params={"q": q})
        assert page.status_code == 200
        return [row["name"] for row in page.json()["data"]]

    assert await names("école") == ["ÉCOLE de danse"]
    assert await names("École DE") == ["ÉCOLE de danse"]
    assert await names("STRASSE") == []  # lower case, not case folding: ß is no "ss"
    assert await names("STRAßE") == ["Straße"]
    assert await names("σοφ") == ["ΣΟΦΙΑ"]
    assert await names("ёлк") == ["Ёлка"]
    assert await names("ECOLE") == ["ecole"]


@pytest.mark.parametrize("q", ["", "a", "ab", "É", "%%"])
async def test_q_shorter_than_three_characters_is_a_422_that_says_why(
    client: httpx.AsyncClient, q: str
) -> None:
    await client.post("/items", json={"name": "ab", "price": 1})
    refused = await client.get("/items", params={"q": q})
    assert refused.status_code == 422
    assert refused.headers["content-type"] == PROBLEM
    problem = refused.json()
    assert problem["errors"] == [
        {
            "field": "q",
            "in": "query",
            "message": "must be at least 3 characters: a name search looks for 3 or more "
            "(leave q out to list every item)",
            "type": "string_too_short",
        }
    ]
    assert "q: must be at least 3 characters" in problem["detail"]
    assert (await client.get("/items", params={"q": "abc"})).status_code == 200


async def test_filters_by_price_range_and_paginates_filtered(client: httpx.AsyncClient) -> None:
    for price in range(1, 31):
        await client.post("/items", json={"name": f"P{price}", "price": price})
    first = (
        await client.get("/items", params={"min_price": 10, "max_price": 20, "limit": 5})
    ).json()
    assert [row["price"] for row in first["data"]] == [10, 11, 12, 13, 14]
    second = (
        await client.get(
            "/items",
            params={"min_price": 10, "max_price": 20, "limit": 10, "cursor": first["next_cursor"]},
        )
    ).json()
    assert [row["price"] for row in second["data"]] == list(range(15, 21))
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"min_price": 20, "max_price": 10},
        {"min_price": "cheap"},
        {"max_price": -5},
        {"q": "q" * 201},
    ],
)
async def test_bad_filters_are_422(client: httpx.AsyncClient, params: dict[str, str | int]) -> None:
    response = await client.get("/items", params=params)
    assert response.status_code == 422
    assert response.json()["errors"]
