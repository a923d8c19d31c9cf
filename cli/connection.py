"""The connection options of the REST commands, declared once: `--api-url` (DS_API_URL),
`--token` (DS_TOKEN), `--team` (DS_TEAM_ID) and `--json`.

One callback (`connection_callback`) reads them; it is the callback of the root `distill-studio`
app and of each REST sub-app, and `command()` gives every REST command the same options, so all
of these mean the same:

    distill-studio --token T --json runs list
    distill-studio runs --token T --json list
    distill-studio runs list --token T --json        (as scripts wrote it before)

An option given on the command line wins over one from the environment; given at several
levels, the one nearest the command wins. A command receives the result as a `Connection`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

from client import ApiError, Client

DEFAULT_API_URL = "http://127.0.0.1:8000"
_META_KEY = "distill_studio.connection"  # in click's ctx.meta, shared by the context chain
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Connection:
    """Where a REST command talks to, as whom, for which team, and how it prints."""

    api_url: str = DEFAULT_API_URL
    token: str | None = None
    team: int | None = None
    as_json: bool = False

    def client(self) -> Client:
        """The typed client for this connection; a missing token is a usage error."""
        if not self.token:
            raise typer.BadParameter(
                "give an API token with --token or DS_TOKEN (create one in the UI, or "
                "POST /api/v1/auth/tokens)",
                param_hint="--token",
            )
        return Client(self.api_url or DEFAULT_API_URL, self.token, team_id=self.team, timeout=60)


def _options() -> list[inspect.Parameter]:
    """The four options as function parameters (what Typer builds click options from)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter(
            "api_url",
            keyword,
            default=DEFAULT_API_URL,
            annotation=Annotated[
                str,
                typer.Option(
                    "--api-url", envvar="DS_API_URL", help="The studio's URL.", show_default=True
                ),
            ],
        ),
        inspect.Parameter(
            "token",
            keyword,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Option(
                    "--token", envvar="DS_TOKEN", help="API token (ds_...).", show_default=False
                ),
            ],
        ),
        inspect.Parameter(
            "team",
            keyword,
            default=None,
            annotation=Annotated[
                int | None,
                typer.Option(
                    "--team",
                    envvar="DS_TEAM_ID",
                    show_default=False,
                    help="Act for this team id (X-Team-Id).",
                ),
            ],
        ),
        inspect.Parameter(
            "as_json",
            keyword,
            default=False,
            annotation=Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")],
        ),
    ]


OPTION_NAMES = tuple(p.name for p in _options())


def _remember(ctx: typer.Context, values: dict[str, Any]) -> Connection:
    """Merge this level's option values into the chain's and return the result: a value typed
    on the command line replaces any earlier one; one from the environment or a default only
    fills a gap."""
    state: dict[str, tuple[Any, bool]] = ctx.meta.setdefault(_META_KEY, {})
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        explicit = source is not None and source.name == "COMMANDLINE"
        if explicit or name not in state:
            state[name] = (value, explicit)
    return Connection(**{name: value for name, (value, _) in state.items()})


def _connection_callback(ctx: typer.Context, **values: Any) -> None:
    _remember(ctx, values)


_CONTEXT = inspect.Parameter(
    "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
)
_connection_callback.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_CONTEXT, *_options()]
)


def with_connection(app: typer.Typer) -> typer.Typer:
    """Give `app` the connection options as its callback (before its subcommand)."""
    app.callback()(_connection_callback)
    return app


def command(app: typer.Typer, name: str) -> Callable[[F], F]:
    """Register `fn(conn: Connection, ...)` as `app`'s command `name`, with the connection
    options after it too; an `ApiError` becomes its message on stderr and exit status 1."""

    def register(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "conn"]

        def run(ctx: typer.Context, **kwargs: Any) -> Any:
            conn = _remember(ctx, {key: kwargs.pop(key) for key in OPTION_NAMES})
            try:
                return fn(conn, **kwargs)
            except ApiError as exc:
                where = f" ({exc.status})" if exc.status else ""
                typer.echo(f"error{where}: {exc.detail}", err=True)
                raise typer.Exit(1) from None

        run.__name__, run.__doc__, run.__module__ = fn.__name__, fn.__doc__, fn.__module__
        run.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[_CONTEXT, *own, *_options()]
        )  # type: ignore[attr-defined]
        app.command(name)(run)
        return fn

    return register
