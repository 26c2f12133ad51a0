"""HTTP routes of the notifications service: parse, call the service, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from regatta.common.data.db import SessionDep
from regatta.common.data.idempotency import IdempotencyKeyHeader, IdempotencyStore
from regatta.common.http.auth import ReaderDep, WriterDep
from regatta.common.http.conditional import NOT_MODIFIED, IfNoneMatchHeader
from regatta.common.http.pagination import UuidPageDep
from regatta.common.http.problems import problem_responses
from regatta.common.http.resources import entry_response, idempotency_store, stored_response
from regatta.common.http.routing import STRICT_QUERY, route_head
from regatta.common.runtime import Runtime
from regatta.notifications import service
from regatta.notifications.schemas import (
    NotificationCreate,
    NotificationPage,
    NotificationRead,
    Status,
    SubscriptionCreate,
    SubscriptionPage,
    SubscriptionRead,
)
from regatta.notifications.ssrf import AddressPolicy

router = APIRouter(
    prefix="/notifications",
    tags=["notifications"],
    responses=problem_responses(400, 413, 415, 422, 429, 500, 503),
    dependencies=[STRICT_QUERY],
)

StoreDep = Annotated[IdempotencyStore, Depends(idempotency_store(service.SERVICE_NAME))]
WRITE_ERRORS = problem_responses(401, 403, 409)


async def address_policy(request: Request) -> AddressPolicy:
    """The webhook address policy of this process's settings (dependency)."""
    settings = service.notifications_settings(request.app.state.settings)
    return AddressPolicy(settings.allowed_networks)


PolicyDep = Annotated[AddressPolicy, Depends(address_policy)]


@router.post("", status_code=202, response_model=NotificationRead, responses=WRITE_ERRORS)
async def create_notification(
    notification: NotificationCreate,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    policy: PolicyDep,
    principal: WriterDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Queue an e-mail or a webhook: 202 once it is stored, delivered at least once after."""
    stored = await service.create_notification(
        request=request,
        session=session,
        store=store,
        policy=policy,
        idempotency_key=idempotency_key,
        principal=principal,
        notification=notification,
    )
    runtime: Runtime = request.app.state.runtime
    runtime.wake(service.WAKEUP)
    return stored_response(stored)


READ_ERRORS = problem_responses(401, 403)


@router.get("", response_model=NotificationPage, responses=READ_ERRORS)
async def list_notifications(
    session: SessionDep,
    page: UuidPageDep,
    _principal: ReaderDep,
    status: Annotated[Status | None, Query(description="Only this delivery status.")] = None,
) -> NotificationPage:
    """List notifications, oldest first (a key is needed when keys are configured)."""
    return await service.list_notifications(session=session, page=page, status=status)


@router.post(
    "/subscriptions",
    status_code=201,
    response_model=SubscriptionRead,
    responses=WRITE_ERRORS,
)
async def create_subscription(
    subscription: SubscriptionCreate,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    policy: PolicyDep,
    principal: WriterDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Send every event of one type to a webhook: 201 with its Location."""
    stored = await service.create_subscription(
        request=request,
        session=session,
        store=store,
        policy=policy,
        idempotency_key=idempotency_key,
        principal=principal,
        subscription=subscription,
    )
    return stored_response(stored)


@router.get("/subscriptions", response_model=SubscriptionPage, responses=READ_ERRORS)
async def list_subscriptions(
    session: SessionDep, page: UuidPageDep, _principal: ReaderDep
) -> SubscriptionPage:
    """List subscriptions, oldest first (a key is needed when keys are configured)."""
    return await service.list_subscriptions(session=session, page=page)


@router.get(
    "/subscriptions/{subscription_id}",
    response_model=SubscriptionRead,
    responses=problem_responses(401, 403, 404),
)
async def get_subscription(
    subscription_id: str, session: SessionDep, _principal: ReaderDep
) -> SubscriptionRead:
    """One subscription."""
    return await service.get_subscription(session=session, subscription_id=subscription_id)


@router.delete(
    "/subscriptions/{subscription_id}",
    status_code=204,
    responses=problem_responses(401, 403, 404),
)
async def delete_subscription(
    subscription_id: str, session: SessionDep, _principal: WriterDep
) -> Response:
    """Stop sending events to a webhook."""
    await service.delete_subscription(session=session, subscription_id=subscription_id)
    return Response(status_code=204)


@router.get(
    "/{notification_id}",
    response_model=NotificationRead,
    responses={**problem_responses(401, 403, 404), **NOT_MODIFIED},
)
async def get_notification(
    notification_id: str,
    session: SessionDep,
    _principal: ReaderDep,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """One notification: status, attempts, last error; ETag, 304 when unchanged."""
    entry = await service.get_notification(session=session, notification_id=notification_id)
    return entry_response(entry, if_none_match=if_none_match, private=True)


route_head(router)
