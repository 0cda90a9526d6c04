"""Parity with the public ``alter-sdk`` 0.29.0 client (installed in the dev environment).

For the seed-era surface, every method, parameter (name, kind, default), exception class,
model (and its fields) and enum member of ``alter_sdk`` must exist in ``grantvault`` the same
way. Extra parameters on our side are allowed (``base_url=``...). The test prints how much of
the whole ``alter_sdk.__all__`` is covered.
"""

from __future__ import annotations

import inspect
from typing import Any

import alter_sdk
import pytest
from alter_sdk import exceptions as alter_exceptions
from alter_sdk.client import _VaultClient

import grantvault
from grantvault import App, SyncApp

SEED_METHODS = [
    "request",
    "connect",
    "poll_connect_session",
    "create_connect_session",
    "authenticate",
    "create_auth_session",
    "poll_auth_session",
    "verify_user_token",
    "list_grants",
    "revoke_grant",
    "create_managed_secret_grant",
    "close",
]
SEED_MODELS = [
    "AgentPrincipal",
    "AuthResult",
    "AuthSession",
    "ConnectDelegation",
    "ConnectFailedGrant",
    "ConnectResult",
    "ConnectSession",
    "CreateGrantResult",
    "GrantInfo",
    "GrantPolicy",
    "GrantPolicyInput",
    "GroupPrincipal",
    "ManagedSecretGrantItem",
    "OAuthGrantItem",
    "RateLimitSnapshot",
    "RetryErrorInfo",
    "RetryInfo",
    "RevokeGrantResult",
    "SystemPrincipal",
    "TokenResponse",
    "UnifiedGrantListResult",
    "UserPrincipal",
]
SEED_OTHER = ["App", "CallerType", "HttpMethod", "Provider", "is_valid_key", "GrantListItem",
              "Principal", "PrincipalType", "NonGroupPrincipalType"]  # fmt: skip


def _alter_signature(name: str) -> inspect.Signature:
    sig = inspect.signature(getattr(alter_sdk.App, name))
    kinds = {p.kind for p in sig.parameters.values()}
    if inspect.Parameter.VAR_POSITIONAL in kinds:  # a forwarder: the real one is on the client
        sig = inspect.signature(getattr(_VaultClient, name))
    return sig


def _params(sig: inspect.Signature) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in sig.parameters.items() if n != "self"}


@pytest.mark.parametrize("cls", [App, SyncApp])
@pytest.mark.parametrize("name", SEED_METHODS)
def test_methods_have_the_same_parameters(cls: type[Any], name: str) -> None:
    theirs = _params(_alter_signature(name))
    ours = _params(inspect.signature(getattr(cls, name)))
    for pname, param in theirs.items():
        assert pname in ours, f"{cls.__name__}.{name} lacks parameter {pname}"
        mine = ours[pname]
        assert mine.kind == param.kind, f"{name}({pname}): {mine.kind} != {param.kind}"
        if param.default is not inspect.Parameter.empty:
            assert mine.default == param.default, f"{name}({pname}) default differs"
    extra_required = [
        p for n, p in ours.items() if n not in theirs and p.default is inspect.Parameter.empty
    ]
    assert extra_required == [], f"{name} has extra required parameters {extra_required}"
    is_async = inspect.iscoroutinefunction(getattr(cls, name))
    assert is_async == (cls is App), f"{cls.__name__}.{name} async={is_async}"


def test_constructor_accepts_the_same_arguments() -> None:
    theirs = _params(inspect.signature(alter_sdk.App.__init__))
    for cls in (App, SyncApp):
        ours = _params(inspect.signature(cls.__init__))
        for pname, param in theirs.items():
            assert pname in ours and ours[pname].kind == param.kind, pname
            if param.default is not inspect.Parameter.empty:
                assert ours[pname].default == param.default, pname


def _alter_exception_names() -> list[str]:
    return sorted(
        name
        for name, obj in vars(alter_exceptions).items()
        if isinstance(obj, type) and issubclass(obj, alter_exceptions.AlterSDKError)
    )


def test_exception_classes_and_hierarchy() -> None:
    for name in _alter_exception_names():
        theirs = getattr(alter_exceptions, name)
        ours = getattr(grantvault, name)
        their_bases = [b.__name__ for b in theirs.__mro__ if b.__module__ == theirs.__module__]
        our_bases = [b.__name__ for b in ours.__mro__ if b.__module__ == ours.__module__]
        assert our_bases == their_bases, name
        their_init = _params(inspect.signature(theirs.__init__))
        our_init = _params(inspect.signature(ours.__init__))
        assert list(their_init) == list(our_init), f"{name} constructor differs"


@pytest.mark.parametrize("name", SEED_MODELS)
def test_models_have_the_same_fields(name: str) -> None:
    theirs = getattr(alter_sdk, name)
    ours = getattr(grantvault, name)
    missing = set(theirs.model_fields) - set(ours.model_fields)
    assert not missing, f"{name} lacks fields {sorted(missing)}"


def test_enums_and_other_names() -> None:
    for name in SEED_OTHER:
        assert hasattr(grantvault, name), name
    for enum in ("Provider", "HttpMethod", "CallerType"):
        theirs = {m.name: m.value for m in getattr(alter_sdk, enum)}
        ours = {m.name: m.value for m in getattr(grantvault, enum)}
        assert ours == theirs, enum
    assert len(grantvault.Provider) == 71
    key = "alter_rk_" + "a" * 22 + "_aaaaaa"
    assert grantvault.is_valid_key(key) == alter_sdk.is_valid_key(key)


def test_print_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    seed_names = (
        [f"App.{m}" for m in SEED_METHODS] + _alter_exception_names() + SEED_MODELS + SEED_OTHER
    )
    seed_present = [
        n
        for n in seed_names
        if (hasattr(App, n.split(".", 1)[1]) if n.startswith("App.") else hasattr(grantvault, n))
    ]
    all_names = sorted(alter_sdk.__all__)
    present = [n for n in all_names if n in grantvault.__all__]
    app_methods = [m for m in dir(alter_sdk.App) if not m.startswith("_")]
    our_methods = [m for m in app_methods if hasattr(App, m)]
    with capsys.disabled():
        print(  # noqa: T201
            f"\nparity: seed-era subset {len(seed_present)}/{len(seed_names)} names; "
            f"alter_sdk.__all__ {len(present)}/{len(all_names)}; "
            f"App public attributes {len(our_methods)}/{len(app_methods)} "
            f"(missing: {', '.join(sorted(set(app_methods) - set(our_methods)))})"
        )
    assert seed_present == seed_names
