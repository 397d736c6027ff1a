"""``metriqo-bridge recipes``: the recipe library — list it, print a recipe, write one to a
file to start a mapping file from."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge.cli.command import Subparsers
from bridge.errors import EX_FAILURE, EX_OK


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "recipes",
        help="list the shipped mapping recipes (Tasmota, Zigbee2MQTT, ...); show or write one",
        description="The recipe library: ready mapping files, with tests, for the conventions "
        "plants run. Without an action, list them. See docs/guide/recipes.md.",
    )
    p.set_defaults(handler=run_list)
    actions = p.add_subparsers(dest="action")
    show = actions.add_parser(
        "show",
        help="print a recipe's YAML",
        description="Print a recipe's mapping file (YAML) to stdout.",
    )
    show.add_argument("name", help="the recipe's name (see 'metriqo-bridge recipes')")
    show.set_defaults(handler=run_show)
    write = actions.add_parser(
        "write",
        help="write a recipe to a mapping file",
        description="Write a recipe's mapping file, to edit and check with 'metriqo-bridge "
        "check --strict' and 'metriqo-bridge test'. An existing file is not overwritten "
        "without --force.",
    )
    write.add_argument("name", help="the recipe's name (see 'metriqo-bridge recipes')")
    write.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="where to write it (default: topic-mappings.yaml)",
        default=Path("topic-mappings.yaml"),
    )
    write.add_argument("--force", action="store_true", help="overwrite an existing file")
    write.set_defaults(handler=run_write)


def run_list(args: argparse.Namespace) -> int:
    from bridge.recipes import catalogue

    recipes = catalogue()
    width = max(len(r.name) for r in recipes)
    for r in recipes:
        print(f"{r.name:<{width}}  {r.title}")
    return EX_OK


def run_show(args: argparse.Namespace) -> int:
    from bridge.recipes import recipe

    sys.stdout.write(recipe(args.name).text)
    sys.stdout.flush()
    return EX_OK


def run_write(args: argparse.Namespace) -> int:
    from bridge.recipes import recipe

    found = recipe(args.name)
    file: Path = args.file
    try:
        # "x" refuses to replace a mapping file someone has edited, unless asked to.
        with file.open("w" if args.force else "x", encoding="utf-8") as out:
            out.write(found.text)
    except FileExistsError:
        print(f"metriqo-bridge: {file} exists; use --force to overwrite it", file=sys.stderr)
        return EX_FAILURE
    except OSError as exc:
        print(f"metriqo-bridge: {file}: {exc.strerror}", file=sys.stderr)
        return EX_FAILURE
    print(
        f"wrote recipe {found.name} to {file}; check it with: metriqo-bridge check --strict "
        f"{file} && metriqo-bridge test {file}"
    )
    return EX_OK
