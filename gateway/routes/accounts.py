"""Accounts endpoints: signup, login, me, addresses, payment methods, wallet credit."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from accounts.passwords import MAX_LENGTH, MIN_LENGTH
from gateway.api import Body, Reply, RouteTable, path_int, principal
from gateway.context import services
from gateway.policy import Price

routes = RouteTable("accounts")

Email = Annotated[str, Meta(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Text = Annotated[str, Meta(min_length=1, max_length=200)]


Password = Annotated[str, Meta(min_length=MIN_LENGTH, max_length=MAX_LENGTH,
                                description="not one of the most common passwords")]


class SignupRequest(Body):
    email: Email
    password: Password
    name: Text


class LoginRequest(Body):
    email: Annotated[str, Meta(max_length=254)]
    password: Annotated[str, Meta(max_length=256)]


class PasswordChange(Body):
    current_password: Annotated[str, Meta(max_length=256)]
    new_password: Password


class Revoked(msgspec.Struct):
    user_id: int
    revoked: bool


class TokenResponse(msgspec.Struct):
    user_id: int
    token: str


class MeResponse(msgspec.Struct):
    user_id: int
    email: str
    name: str
    role: str
    wallet_balance: Decimal


class AddressRequest(Body):
    line1: Text
    city: Text
    postal_code: Annotated[str, Meta(min_length=1, max_length=20)]
    country: Annotated[str, Meta(min_length=2, max_length=56)]
    line2: Annotated[str, Meta(max_length=200)] | None = None


class Address(msgspec.Struct):
    address_id: int
    line1: str
    line2: str | None
    city: str
    postal_code: str
    country: str


class PaymentMethodRequest(Body):
    type: Literal["card", "wallet", "cod"]
    card_number: Annotated[str, Meta(max_length=23)] | None = None
    exp_month: Annotated[int, Meta(ge=1, le=12)] | None = None
    exp_year: Annotated[int, Meta(ge=2000, le=2100)] | None = None
    cvc: Annotated[str, Meta(max_length=4)] | None = None


class PaymentMethod(msgspec.Struct, omit_defaults=True):
    payment_method_id: int
    type: str
    last4: str | None = None
    brand: str | None = None
    exp_month: int | None = None
    exp_year: int | None = None


class CreditRequest(Body):
    amount: Price
    # The same key again credits nothing more (a retried credit is paid once).
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=100)] | None = None


class BalanceResponse(msgspec.Struct):
    user_id: int
    balance: Decimal


class RoleRequest(Body):
    role: Literal["customer", "seller", "admin"]


def _payment_method(row: dict) -> PaymentMethod:
    return PaymentMethod(payment_method_id=row["payment_method_id"], type=row["type"],
                         last4=row["last4"], brand=row["brand"], exp_month=row["exp_month"],
                         exp_year=row["exp_year"])


def client_address(request: web.Request) -> str:
    return request.remote or ""


@routes.post("/api/v1/auth/signup", auth="public", body=SignupRequest, response=TokenResponse,
             status=201, errors=(409, 429))
async def signup(request: web.Request, body: SignupRequest) -> TokenResponse:
    """Create a customer account and return a bearer token."""
    out = await services(request).accounts.signup(email=body.email, password=body.password,
                                                  name=body.name,
                                                  client=client_address(request))
    return TokenResponse(**out)


@routes.post("/api/v1/auth/seller-signup", auth="public", body=SignupRequest,
             response=TokenResponse, status=201, errors=(409, 429))
async def seller_signup(request: web.Request, body: SignupRequest) -> TokenResponse:
    """Create a seller account (it manages its own products) and return a bearer token."""
    out = await services(request).accounts.signup(email=body.email, password=body.password,
                                                  name=body.name, role="seller",
                                                  client=client_address(request))
    return TokenResponse(**out)


@routes.post("/api/v1/auth/login", auth="public", body=LoginRequest, response=TokenResponse,
             errors=(401, 429))
async def login(request: web.Request, body: LoginRequest) -> TokenResponse:
    """Exchange email and password for a bearer token. Repeated failures for an account
    or from an address are answered 429 with Retry-After, for a doubling delay."""
    out = await services(request).accounts.login(email=body.email, password=body.password,
                                                 client=client_address(request))
    return TokenResponse(**out)


@routes.post("/api/v1/auth/logout-all", auth="owner", response=Revoked, errors=(403,))
async def logout_all(request: web.Request) -> Revoked:
    """Log out everywhere: every token of yours issued so far stops working at once."""
    user_id = principal(request).user_id
    await services(request).accounts.revoke_tokens(user_id)
    return Revoked(user_id=user_id, revoked=True)


@routes.post("/api/v1/me/password", auth="owner", body=PasswordChange, response=TokenResponse,
             errors=(403, 429))
async def change_password(request: web.Request, body: PasswordChange) -> TokenResponse:
    """Change your password: your other tokens are revoked, a fresh one is returned."""
    out = await services(request).accounts.change_password(
        principal(request).user_id, current=body.current_password, new=body.new_password,
        client=client_address(request))
    return TokenResponse(**out)


@routes.get("/api/v1/me", auth="owner", response=MeResponse)
async def me(request: web.Request) -> MeResponse:
    """The signed-in user."""
    return MeResponse(**await services(request).accounts.get_user(principal(request).user_id))


@routes.post("/api/v1/me/addresses", auth="owner",
             body=AddressRequest, response=Address, status=201)
async def add_address(request: web.Request, body: AddressRequest) -> Address:
    """Add a shipping address."""
    row = await services(request).accounts.add_address(
        principal(request).user_id, line1=body.line1, line2=body.line2, city=body.city,
        postal_code=body.postal_code, country=body.country)
    return Address(**row)


@routes.get("/api/v1/me/addresses", auth="owner", response=list[Address])
async def list_addresses(request: web.Request) -> list[Address]:
    """The user's addresses."""
    rows = await services(request).accounts.list_addresses(principal(request).user_id)
    return [Address(**r) for r in rows]


@routes.get("/api/v1/me/addresses/{address_id}", auth="owner", response=Address)
async def get_address(request: web.Request) -> Address:
    """One of the user's addresses."""
    row = await services(request).accounts.get_address(
        principal(request).user_id, path_int(request, "address_id"))
    return Address(**row)


@routes.post("/api/v1/me/payment-methods", auth="owner",
             body=PaymentMethodRequest, response=PaymentMethod,
             status=201)
async def add_payment_method(request: web.Request, body: PaymentMethodRequest) -> PaymentMethod:
    """Add a card (kept as brand, last4 and a provider token), a wallet or cash on delivery."""
    row = await services(request).accounts.add_payment_method(
        principal(request).user_id, type=body.type, card_number=body.card_number,
        exp_month=body.exp_month, exp_year=body.exp_year, cvc=body.cvc)
    return _payment_method(row)


@routes.get("/api/v1/me/payment-methods", auth="owner", response=list[PaymentMethod])
async def list_payment_methods(request: web.Request) -> list[PaymentMethod]:
    """The user's payment methods."""
    rows = await services(request).accounts.list_payment_methods(principal(request).user_id)
    return [_payment_method(r) for r in rows]


@routes.get("/api/v1/me/payment-methods/{payment_method_id}", auth="owner", response=PaymentMethod)
async def get_payment_method(request: web.Request) -> PaymentMethod:
    """One of the user's payment methods."""
    row = await services(request).accounts.get_payment_method(
        principal(request).user_id, path_int(request, "payment_method_id"))
    return _payment_method(row)


@routes.post("/api/v1/admin/wallets/{user_id}/credit", auth="admin", body=CreditRequest,
             response=BalanceResponse)
async def credit_wallet(request: web.Request, body: CreditRequest) -> BalanceResponse:
    """Credit a user's wallet (admin).

    With ``idempotency_key`` a repeat credits nothing more; every credit is recorded in
    the wallet ledger."""
    user_id = path_int(request, "user_id")
    balance = await services(request).accounts.credit_wallet(user_id, body.amount,
                                                             body.idempotency_key)
    return BalanceResponse(user_id=user_id, balance=balance)


@routes.put("/api/v1/admin/users/{user_id}/role", auth="admin", body=RoleRequest,
            response=MeResponse)
async def set_role(request: web.Request, body: RoleRequest) -> Reply:
    """Grant a role (admin): customer, seller or admin."""
    svc = services(request).accounts
    user_id = path_int(request, "user_id")
    await svc.set_role(user_id, body.role)
    return Reply(MeResponse(**await svc.get_user(user_id)), 200)
