"""``openseg-r segmenters``: every segmenter kind this installation knows (built in and
plugins), with its options, their defaults and help (:mod:`openseg_r.segmenters.registry`)."""

from __future__ import annotations

import argparse
import json

from openseg_r.cli.options import EXIT_OK


def add_parsers(commands) -> None:
    listing = commands.add_parser("segmenters", help="list the segmenter kinds, their options and defaults")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of text")
    listing.set_defaults(handler=run_list)


def run_list(args: argparse.Namespace) -> int:
    from openseg_r.segmenters.registry import DEFAULT_KIND, describe_kinds

    kinds = describe_kinds()
    if args.json:
        print(json.dumps({"default": DEFAULT_KIND, "kinds": kinds}, indent=2, default=str))
        return EXIT_OK
    for kind in kinds:
        default = " (default)" if kind["kind"] == DEFAULT_KIND else ""
        print(f"{kind['kind']}{default}: {kind['summary']} [{kind['origin']}]")
        for option, values in kind["variants"].items():
            print(f"  {option} variants: {', '.join(values)}")
        for option in kind["options"]:
            speed = "; speed only" if option["speed_only"] else ""
            print(f"  {option['name']} = {option['default']!r}  {option['help']}{speed}")
        print()
    print("choose one with --segmenter KIND and set its options with --segmenter-option KEY=VALUE (repeatable)")
    return EXIT_OK
