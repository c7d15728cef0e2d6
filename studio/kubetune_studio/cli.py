"""``kubetune-studio``: run the studio and manage campaigns from a shell.

The management commands work on the database directly (``KUBETUNE_STUDIO_DATABASE_URL``,
default ``sqlite:///studio.db``); labelers use the web pages, scripts the JSON API.

Exit codes: 0 done; 1 refused (a conflict, something missing); 2 bad usage; 65 bad input data
(a file or a field, named in the message); 69 a service could not be reached (the database, a
model endpoint).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from kubetune_studio import analysis, arena, campaigns, generation, importer
from kubetune_studio.config import Settings
from kubetune_studio.errors import Invalid, StudioError, validated
from kubetune_studio.store.database import (
    current_revision,
    make_engine,
    session_factory,
    transaction,
    upgrade,
)
from kubetune_studio.web.auth import create_login

Spec = TypeVar("Spec", bound=BaseModel)
EXIT_REFUSED = 1
EXIT_DATA = 65
EXIT_UNAVAILABLE = 69
log = logging.getLogger("kubetune_studio")


@contextmanager
def store(settings: Settings) -> Iterator[Session]:
    engine = make_engine(settings.database_url)
    try:
        with transaction(session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from kubetune_studio.web.app import create_app

    engine = make_engine(settings.database_url)
    if not args.no_migrate:
        upgrade(engine)
    if settings.admin_email and settings.admin_password:
        with transaction(session_factory(engine)) as session:
            campaigns.ensure_admin(session, settings.admin_email, settings.admin_password)
    app = create_app(settings, session_factory(engine))
    print(f"kubetune studio at http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=True)
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    engine = make_engine(settings.database_url)
    before = current_revision(engine)
    upgrade(engine, args.to)
    print(f"database at revision {current_revision(engine)} (was {before or 'empty'})")
    engine.dispose()
    return 0


def _password(env: str, prompt: str) -> str:
    given = os.environ.get(env)
    if given:
        return given
    if not sys.stdin.isatty():
        raise Invalid(f"password: set ${env} (no terminal to ask on)")
    return getpass.getpass(prompt)


def cmd_add_admin(args: argparse.Namespace, settings: Settings) -> int:
    password = _password("KUBETUNE_STUDIO_ADMIN_PASSWORD", f"password for {args.email}: ")
    with store(settings) as session:
        admin = campaigns.ensure_admin(session, args.email, password)
        print(f"admin {admin.email} ready")
    return 0


def cmd_add_labeler(args: argparse.Namespace, settings: Settings) -> int:
    password = os.environ.get("KUBETUNE_STUDIO_NEW_PASSWORD") or secrets.token_urlsafe(12)
    with store(settings) as session:
        labeler = campaigns.create_labeler(session, args.email, password, name=args.name or "")
        print(f"labeler {labeler.email} added")
        if not os.environ.get("KUBETUNE_STUDIO_NEW_PASSWORD"):
            print(f"password (shown once): {password}")
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    """A bearer token for scripts and training jobs (``studio://`` sources), printed once."""
    with store(settings) as session:
        labeler = campaigns.find_labeler(session, args.email)
        token = create_login(session, labeler, args.hours)
    print(token)
    return 0


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Invalid(f"{path}: cannot read: {exc}") from exc


def _spec_from_file(path: str, model: type[Spec]) -> Spec:
    """A YAML or JSON file as ``model``; a refusal names the file and the field."""
    try:
        document = yaml.safe_load(_read(path))
    except yaml.YAMLError as exc:
        raise Invalid(f"{path}: not YAML or JSON: {str(exc).splitlines()[0]}") from exc
    try:
        return validated(model, document)
    except Invalid as exc:
        raise Invalid(f"{path}: {exc.message}") from None


def cmd_create_campaign(args: argparse.Namespace, settings: Settings) -> int:
    spec = _spec_from_file(args.file, campaigns.CampaignSpec)
    with store(settings) as session:
        campaign = campaigns.create_campaign(session, spec)
        print(f"campaign {campaign.slug} created ({', '.join(m.name for m in campaign.models)})")
    return 0


def cmd_add_members(args: argparse.Namespace, settings: Settings) -> int:
    with store(settings) as session:
        campaign = campaigns.get_campaign(session, args.campaign)
        added = campaigns.add_members(session, campaign, args.emails)
        print(f"{campaign.slug}: members {', '.join(sorted(lab.email for lab in added))}")
    return 0


def _rows(path: str, parse_row: Callable[[dict[str, Any]], Any]) -> list[Any]:
    return importer.parse_lines(_read(path).splitlines(), path, parse_row)


def cmd_import_responses(args: argparse.Namespace, settings: Settings) -> int:
    rows = _rows(args.file, importer.response_row)
    with store(settings) as session:
        campaign = campaigns.get_campaign(session, args.campaign)
        outcome = campaigns.import_responses(session, campaign, rows, Path(args.file).name)
        made = campaigns.build_items(session, campaign) if campaign.state == "collecting" else 0
        print(
            f"{campaign.slug}: {outcome.added} responses added, {outcome.replaced} replaced, "
            f"{outcome.prompts} new prompts" + (f", {made} items made" if made else "")
        )
    return 0


def cmd_import_prompts(args: argparse.Namespace, settings: Settings) -> int:
    rows = _rows(args.file, importer.prompt_row)
    with store(settings) as session:
        campaign = campaigns.get_campaign(session, args.campaign)
        added = campaigns.add_prompts(session, campaign, rows)
        print(f"{campaign.slug}: {added} new prompts ({len(rows) - added} known)")
    return 0


def cmd_import_gold(args: argparse.Namespace, settings: Settings) -> int:
    rows = _rows(args.file, importer.gold_row)
    with store(settings) as session:
        campaign = campaigns.get_campaign(session, args.campaign)
        added = campaigns.add_gold(session, campaign, rows, Path(args.file).name)
        print(f"{campaign.slug}: {added} gold items added")
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    served = dict(_name_value(s) for s in args.serve)
    with ExitStack() as stack, store(settings) as session:
        campaign = campaigns.get_campaign(session, args.campaign)
        known = {m.name: m for m in campaign.models}
        for name, source in served.items():
            if name not in known:
                raise Invalid(f"--serve {name}: not a model of campaign '{campaign.slug}'")
            print(f"starting kubetune serve {source} as {name} ...", flush=True)
            known[name].endpoint = stack.enter_context(generation.served_locally(source, name))
        total = sum(len(todo) for _, todo in generation.missing(session, campaign))
        bar = stack.enter_context(tqdm(total=total, desc="responses", unit="resp", file=sys.stderr))
        outcome = generation.fill_missing(
            session,
            campaign,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            progress=bar.update,
        )
        for name in served:  # a local server's address is gone once it stops
            known[name].endpoint = None
    print(
        f"{args.campaign}: {outcome.generated} responses generated, {outcome.failed} failed, "
        f"{outcome.items_made} items made"
    )
    for line in outcome.errors:
        print(f"  {line}", file=sys.stderr)
    return EXIT_UNAVAILABLE if outcome.failed and not outcome.generated else 0


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise Invalid(f"--serve {text!r}: expected NAME=MODEL_SOURCE")
    return name, value


def cmd_state(args: argparse.Namespace, settings: Settings) -> int:
    with store(settings) as session:
        campaign = campaigns.get_campaign(session, args.campaign)
        campaigns.set_state(session, campaign, args.state)
        seen = analysis.overview(session, campaign)
        print(f"{campaign.slug}: {campaign.state} ({seen.items} items, {seen.gold_items} gold)")
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from kubetune_studio.web.views import campaign_report

    with store(settings) as session:
        report = campaign_report(session, campaigns.get_campaign(session, args.campaign))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(format_report(report))
    return 0


def format_report(report: dict[str, Any]) -> str:
    def num(value: float | None, digits: int = 3) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    c, seen, agree = report["campaign"], report["overview"], report["agreement"]
    lines = [
        f"campaign {c['slug']} ({c['state']}): {seen['items']} items + {seen['gold_items']} gold, "
        f"{seen['votes']} votes, {seen['items_at_overlap']}/{seen['items']} at "
        f"{c['labels_per_item']} labels",
        f"agreement: Krippendorff's alpha {num(agree['krippendorff_alpha'])} "
        f"(before exclusions {num(agree['krippendorff_alpha_before_exclusions'])}), "
        f"mean Cohen's kappa {num(agree['mean_cohen_kappa'])}",
        "",
        f"{'LABELER':<28} {'VOTES':>5} {'GOLD':>11} {'CONSENSUS':>13} {'S/VOTE':>7}  STATUS",
    ]
    for q in report["labelers"]:
        status = "excluded" if q["excluded"] else "included"
        if q["reasons"]:
            status += ": " + "; ".join(q["reasons"])
        lines.append(
            f"{q['email']:<28} {q['votes']:>5} "
            f"{num(q['gold_agreement'], 2):>5} ({q['gold_votes']:>3}) "
            f"{num(q['consensus_agreement'], 2):>5} ({q['consensus_comparisons']:>4}) "
            f"{num(q['median_seconds'], 1):>7}  {status}"
        )
    lines += ["", f"{'MODEL':<20} {'WIN RATE vs ' + c['baseline']:<28} {'95% CI':<17} ITEMS"]
    for w in report["win_rates"]:
        lines.append(
            f"{w['model']:<20} {num(w['win_rate']):<28} "
            f"[{num(w['low'])}, {num(w['high'])}]  {w['items']}"
        )
    return "\n".join(lines)


def cmd_arena(args: argparse.Namespace, settings: Settings) -> int:
    from kubetune_studio.judging import campaign_agreement

    with store(settings) as session:
        campaign = campaigns.get_campaign(session, args.campaign)
        board, found = analysis.arena_leaderboard(
            session, campaign, args.voters, rounds=args.rounds
        )
        agreement = campaign_agreement(session, campaign)
    if args.json:
        document = board.to_json() | {
            "voters": args.voters,
            "discarded_leaked": found.discarded_leaked,
            "discarded_excluded": found.discarded_excluded,
            "judge_agreement": agreement,
        }
        print(json.dumps(document, indent=2))
        return 0
    print(format_leaderboard(args.campaign, args.voters, board, found))
    if agreement is not None:
        print("\n" + format_agreement(agreement))
    return 0


def format_agreement(agreement: dict[str, Any]) -> str:
    def line(label: str, a: dict[str, Any]) -> str:
        if a["value"] is None:
            return f"{label}: – (no item with both judge and human votes)"
        return (
            f"{label}: {a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}] over {a['items']} "
            f"items ({a['comparisons']} human votes)"
        )

    lines = [line("judge-human agreement", agreement["overall"])]
    lines += [line(f"  {name}", a) for name, a in agreement["by_category"].items()]
    return "\n".join(lines)


def cmd_judge(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from kubetune_studio.judging import judge_campaign
    from kubetune_trainer.evaluation.judge import ChatClient

    if (args.endpoint is None) == (args.serve is None):
        raise Invalid("--endpoint or --serve: give exactly one")
    with ExitStack() as stack:
        endpoint = args.endpoint
        if args.serve is not None:
            print(f"starting kubetune serve {args.serve} as {args.model} ...", flush=True)
            endpoint = stack.enter_context(generation.served_locally(args.serve, args.model))
        client = ChatClient(
            endpoint,
            args.model,
            api_key=os.environ.get("KUBETUNE_STUDIO_ENDPOINT_API_KEY"),
            timeout_seconds=args.timeout,
        )
        session = stack.enter_context(store(settings))
        bar = stack.enter_context(tqdm(desc="items", unit="item", file=sys.stderr))
        run = judge_campaign(
            session,
            args.campaign,
            client,
            parallel=args.parallel,
            limit=args.limit,
            progress=bar.update,
        )
    print(
        f"{args.campaign}: judge {run.judge} voted on {run.voted} of {run.asked} items "
        f"({run.position_ties} ties because the two orders disagreed, {run.unscored} unscored)"
    )
    for line in run.errors:
        print(f"  {line}", file=sys.stderr)
    return EXIT_UNAVAILABLE if run.asked and not run.voted else 0


def format_leaderboard(
    slug: str, voters: str, board: arena.Leaderboard, found: analysis.ArenaVotes
) -> str:
    lines = [
        f"arena {slug}: {board.battles} battles ({voters} votes), Bradley-Terry ratings with "
        f"{board.confidence:.0%} bootstrap intervals ({board.rounds} rounds)",
        "",
        f"{'RANK':<5} {'MODEL':<20} {'RATING':>6}  {'95% CI':<13} {'BATTLES':>7}  W / T / L",
    ]
    for r in board.ratings:
        lines.append(
            f"{r.rank:<5} {r.model:<20} {r.rating:>6.0f}  [{r.low:.0f}, {r.high:.0f}]".ljust(48)
            + f"{r.battles:>7}  {r.wins} / {r.ties} / {r.losses}"
        )
    significant = ", ".join(f"{a} > {b}" for a, b in board.significant) or "none"
    width = max(len(m) for m in board.models) + 2
    lines += [
        "",
        f"significant (intervals apart): {significant}",
        f"discarded: {found.discarded_leaked} votes on responses naming a model, "
        f"{found.discarded_excluded} from excluded labelers",
        "",
        "win rate of row against column (battles):",
        " " * width + "".join(f"{m:>{width + 8}}" for m in board.models),
    ]
    for i, model in enumerate(board.models):
        cells = []
        for j in range(len(board.models)):
            rate = board.win_rates[i][j]
            text = (
                ""
                if i == j
                else "–"
                if rate is None
                else f"{rate:.2f} ({board.battle_counts[i][j]})"
            )
            cells.append(f"{text:>{width + 8}}")
        lines.append(f"{model:<{width}}" + "".join(cells))
    return "\n".join(lines)


def cmd_ab_create(args: argparse.Namespace, settings: Settings) -> int:
    from kubetune_studio import router

    spec = _spec_from_file(args.file, router.ExperimentSpec)
    with store(settings) as session:
        experiment = router.create_experiment(session, spec)
        arms = ", ".join(f"{a.name} ({a.weight:g})" for a in experiment.arms)
        print(f"experiment {experiment.slug} created: arms {arms}")
    return 0


def cmd_ab_stop(args: argparse.Namespace, settings: Settings) -> int:
    from kubetune_studio import router

    with store(settings) as session:
        stopped = router.conclude(session, args.experiment, args.keep)
    if args.keep is None:
        print(f"experiment {args.experiment} stopped: its router refuses requests from now on")
    else:
        print(
            f"experiment {args.experiment} concluded: {args.keep} answers every request; "
            f"stopped {', '.join(stopped) or 'no other arm (none was running)'}"
        )
    return 0


def cmd_ab_results(args: argparse.Namespace, settings: Settings) -> int:
    from kubetune_studio import router

    with store(settings) as session:
        found = router.results(session, router.get_experiment(session, args.experiment))
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(format_ab_results(found))
    return 0


def format_ab_results(found: dict[str, Any]) -> str:
    def num(value: float | None, sign: str = "") -> str:
        return "–" if value is None else f"{value:{sign}.3f}"

    lines = [
        f"experiment {found['experiment']} ({found['state']}); control {found['control']}; "
        f"guard at {found['guard']['confidence']:.0%} after "
        f"{found['guard']['min_feedback']} thumbs per arm",
        "",
        f"{'ARM':<16} {'WEIGHT':>6} {'REQUESTS':>8} {'UP/DOWN':>9}  {'RATE [95% CI]':<22} "
        f"{'VS CONTROL [95% CI]':<27} STATUS",
    ]
    for a in found["arms"]:
        rate = f"{num(a['rate'])} [{num(a['rate_low'])}, {num(a['rate_high'])}]"
        versus = (
            ""
            if a["difference_vs_control"] is None
            else f"{num(a['difference_vs_control'], '+')} "
            f"[{num(a['difference_low'], '+')}, {num(a['difference_high'], '+')}]"
        )
        status = "running" if a["running"] else f"stopped: {a['stop_reason']}"
        lines.append(
            f"{a['name']:<16} {a['weight']:>6g} {a['requests']:>8} "
            f"{a['thumbs_up']:>4}/{a['thumbs_down']:<4}  {rate:<22} {versus:<27} {status}"
        )
    for p in found["pairwise"]:
        tally = ", ".join(f"{k} {v}" for k, v in p["preferred"].items())
        lines.append(f"side by side {p['arms'][0]} vs {p['arms'][1]}: {tally}")
    return "\n".join(lines)


def cmd_ab_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from kubetune_studio import router

    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    with transaction(sessions) as session:
        experiment = router.get_experiment(session, args.experiment)
        arms = ", ".join(a.name for a in router.running_arms(experiment))
    app = router.create_router_app(
        sessions, args.experiment, api_key=os.environ.get("KUBETUNE_STUDIO_ENDPOINT_API_KEY")
    )
    print(
        f"A/B router for {args.experiment} ({arms}) at http://{args.host}:{args.port}/v1 "
        "(Ctrl-C to stop)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=True)
    return 0


def cmd_snapshot(args: argparse.Namespace, settings: Settings) -> int:
    with store(settings) as session:
        campaign = campaigns.get_campaign(session, args.campaign)
        record = analysis.create_snapshot(session, campaign, args.root or settings.snapshot_root)
        counts = record.manifest["counts"]
    print(
        f"{args.campaign}: snapshot v{record.version} at {record.location}: "
        f"{counts['pairs']} pairs from {counts['items']} items "
        f"({', '.join(f'{k} {v}' for k, v in counts.items() if k not in ('pairs', 'items'))})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune-studio", description="Human feedback studio: preferences feeding training."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the web application (migrates first)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--no-migrate", action="store_true", help="do not upgrade the database")
    serve.set_defaults(func=cmd_serve)

    migrate = commands.add_parser("migrate", help="upgrade the database schema")
    migrate.add_argument("--to", default="head", help="target revision (default: head)")
    migrate.set_defaults(func=cmd_migrate)

    admin = commands.add_parser(
        "add-admin", help="create an admin (password: $KUBETUNE_STUDIO_ADMIN_PASSWORD or asked)"
    )
    admin.add_argument("email")
    admin.set_defaults(func=cmd_add_admin)

    token = commands.add_parser(
        "token", help="print a new API token for a labeler or admin (for scripts and jobs)"
    )
    token.add_argument("email")
    token.add_argument("--hours", type=float, default=24.0 * 30, help="valid for (default 720)")
    token.set_defaults(func=cmd_token)

    labeler = commands.add_parser(
        "add-labeler",
        help="create a labeler (password: $KUBETUNE_STUDIO_NEW_PASSWORD or generated)",
    )
    labeler.add_argument("email")
    labeler.add_argument("--name")
    labeler.set_defaults(func=cmd_add_labeler)

    create = commands.add_parser("create-campaign", help="create a campaign from a YAML file")
    create.add_argument("file")
    create.set_defaults(func=cmd_create_campaign)

    members = commands.add_parser("add-members", help="let labelers vote in a campaign")
    members.add_argument("campaign")
    members.add_argument("emails", nargs="+")
    members.set_defaults(func=cmd_add_members)

    for name, func, what in (
        ("import-responses", cmd_import_responses, "JSON lines of {prompt, model, response}"),
        ("import-prompts", cmd_import_prompts, "JSON lines of {prompt, category}"),
        ("import-gold", cmd_import_gold, "JSON lines of {prompt, response_a, response_b, answer}"),
    ):
        command = commands.add_parser(name, help=f"import {what}")
        command.add_argument("campaign")
        command.add_argument("file")
        command.set_defaults(func=func)

    generate = commands.add_parser(
        "generate", help="ask the models' endpoints for the responses still missing"
    )
    generate.add_argument("campaign")
    generate.add_argument(
        "--serve",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="start `kubetune serve SOURCE` for model NAME for the duration (repeatable)",
    )
    generate.add_argument("--max-tokens", type=int, default=256)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.set_defaults(func=cmd_generate)

    for name, state in (("open", "collecting"), ("close", "closed")):
        command = commands.add_parser(name, help=f"set the campaign {state}")
        command.add_argument("campaign")
        command.set_defaults(func=cmd_state, state=state)

    report = commands.add_parser("report", help="agreement, labelers and win rates")
    report.add_argument("campaign")
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=cmd_report)

    board = commands.add_parser(
        "arena", help="the Bradley-Terry leaderboard of a campaign's votes, with intervals"
    )
    board.add_argument("campaign")
    board.add_argument(
        "--voters", choices=analysis.VOTERS, default="human", help="whose votes (default human)"
    )
    board.add_argument("--rounds", type=int, default=200, help="bootstrap rounds (default 200)")
    board.add_argument("--json", action="store_true")
    board.set_defaults(func=cmd_arena)

    judge = commands.add_parser(
        "judge", help="an LLM judge votes on a campaign's items (both orders; disagreement: tie)"
    )
    judge.add_argument("campaign")
    judge.add_argument("--endpoint", help="OpenAI-compatible base URL (http://host:port/v1)")
    judge.add_argument(
        "--serve", metavar="SOURCE", help="start `kubetune serve SOURCE` as the judge instead"
    )
    judge.add_argument("--model", required=True, help="the model name the endpoint serves")
    judge.add_argument("--parallel", type=int, default=4)
    judge.add_argument("--limit", type=int, help="at most this many items")
    judge.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    judge.set_defaults(func=cmd_judge)

    ab_create = commands.add_parser("ab-create", help="create a live A/B experiment from YAML")
    ab_create.add_argument("file")
    ab_create.set_defaults(func=cmd_ab_create)

    ab_serve = commands.add_parser(
        "ab-serve", help="run the OpenAI-compatible A/B router of an experiment"
    )
    ab_serve.add_argument("experiment")
    ab_serve.add_argument("--host", default="127.0.0.1")
    ab_serve.add_argument("--port", type=int, default=8090)
    ab_serve.set_defaults(func=cmd_ab_serve)

    ab_stop = commands.add_parser(
        "ab-stop", help="end an experiment: keep one arm serving, or stop its router"
    )
    ab_stop.add_argument("experiment")
    ab_stop.add_argument(
        "--keep", metavar="ARM", help="the arm that answers every request from now on"
    )
    ab_stop.set_defaults(func=cmd_ab_stop)

    ab_results = commands.add_parser(
        "ab-results", help="feedback rates per arm, differences with intervals, stopped arms"
    )
    ab_results.add_argument("experiment")
    ab_results.add_argument("--json", action="store_true")
    ab_results.set_defaults(func=cmd_ab_results)

    snap = commands.add_parser("snapshot", help="write the next preference snapshot")
    snap.add_argument("campaign")
    snap.add_argument("--root", help="where to write (default: $KUBETUNE_STUDIO_SNAPSHOT_ROOT)")
    snap.set_defaults(func=cmd_snapshot)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    log.setLevel(logging.DEBUG if args.debug else logging.INFO)
    try:
        return args.func(args, Settings.from_env())
    except StudioError as exc:
        if args.debug:
            raise
        print(f"kubetune-studio: {exc.message}", file=sys.stderr)
        return EXIT_DATA if isinstance(exc, Invalid) else EXIT_REFUSED
    except (OperationalError, generation.EndpointError) as exc:
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"kubetune-studio: cannot reach a service: {first}", file=sys.stderr)
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
