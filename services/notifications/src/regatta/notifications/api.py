"""HTTP routes of the notifications service: parse, call the service, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import Field

from regatta.common.http.conditional import IF_NONE_MATCH_DOCUMENTED, NOT_MODIFIED
from regatta.common.http.context import ContextFactory, RequestContext
from regatta.common.http.pagination import PageQuery
from regatta.common.http.problems import problem_responses
from regatta.common.http.resources import (
    IdempotencyKeyHeader,
    entry_response,
    stored_response,
)
from regatta.common.http.routing import route_head
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
    # Unknown query parameters are refused by each route's context (ContextFactory).
)

# Every route needs a key when keys are configured: writes a writer's, reads a reader's.
Writing = Annotated[RequestContext, Depends(ContextFactory(service.SERVICE_NAME, "writer"))]
Reading = Annotated[RequestContext, Depends(ContextFactory(service.SERVICE_NAME, "reader"))]
WRITE_ERRORS = problem_responses(401, 403, 409)


def address_policy(context: RequestContext) -> AddressPolicy:
    """The webhook address policy of this process's settings."""
    settings = service.notifications_settings(context.runtime.settings)
    return AddressPolicy(settings.allowed_networks)


@router.post("", status_code=202, response_model=NotificationRead, responses=WRITE_ERRORS)
async def create_notification(
    notification: NotificationCreate,
    context: Writing,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Queue an e-mail or a webhook: 202 once it is stored, delivered at least once after."""
    async with context.database.sessions() as session:
        stored = await service.create_notification(
            request=context.request,
            session=session,
            store=context.store,
            policy=address_policy(context),
            idempotency_key=idempotency_key,
            principal=context.writer,
            notification=notification,
        )
    context.runtime.wake(service.WAKEUP)
    return stored_response(stored)


READ_ERRORS = problem_responses(401, 403)


class NotificationQuery(PageQuery):
    """The notifications list's query: a page, and a delivery status."""

    status: Status | None = Field(None, description="Only this delivery status.")


@router.get("", response_model=NotificationPage, responses=READ_ERRORS)
async def list_notifications(
    context: Reading, query: Annotated[NotificationQuery, Query()]
) -> NotificationPage:
    """List notifications, oldest first (a key is needed when keys are configured)."""
    async with context.database.sessions() as session:
        return await service.list_notifications(
            session=session, page=query.uuid_page(), status=query.status
        )


@router.post(
    "/subscriptions",
    status_code=201,
    response_model=SubscriptionRead,
    responses=WRITE_ERRORS,
)
async def create_subscription(
    subscription: SubscriptionCreate,
    context: Writing,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Send every event of one type to a webhook: 201 with its Location."""
    async with context.database.sessions() as session:
        stored = await service.create_subscription(
            request=context.request,
            session=session,
            store=context.store,
            policy=address_policy(context),
            idempotency_key=idempotency_key,
            principal=context.writer,
            subscription=subscription,
        )
    return stored_response(stored)


@router.get("/subscriptions", response_model=SubscriptionPage, responses=READ_ERRORS)
async def list_subscriptions(
    context: Reading, query: Annotated[PageQuery, Query()]
) -> SubscriptionPage:
    """List subscriptions, oldest first (a key is needed when keys are configured)."""
    async with context.database.sessions() as session:
        return await service.list_subscriptions(session=session, page=query.uuid_page())


@router.get(
    "/subscriptions/{subscription_id}",
    response_model=SubscriptionRead,
    responses=problem_responses(401, 403, 404),
)
async def get_subscription(subscription_id: str, context: Reading) -> SubscriptionRead:
    """One subscription."""
    async with context.database.sessions() as session:
        return await service.get_subscription(session=session, subscription_id=subscription_id)


@router.delete(
    "/subscriptions/{subscription_id}",
    status_code=204,
    responses=problem_responses(401, 403, 404),
)
async def delete_subscription(subscription_id: str, context: Writing) -> Response:
    """Stop sending events to a webhook."""
    async with context.database.sessions() as session:
        await service.delete_subscription(session=session, subscription_id=subscription_id)
    return Response(status_code=204)


@router.get(
    "/{notification_id}",
    response_model=NotificationRead,
    responses={**problem_responses(401, 403, 404), **NOT_MODIFIED},
    openapi_extra=IF_NONE_MATCH_DOCUMENTED,
)
async def get_notification(notification_id: str, context: Reading) -> Response:
    """One notification: status, attempts, last error; ETag, 304 when unchanged."""
    async with context.database.sessions() as session:
        entry = await service.get_notification(session=session, notification_id=notification_id)
    if_none_match = context.request.headers.get("if-none-match")
    return entry_response(entry, if_none_match=if_none_match, private=True)


route_head(router)
