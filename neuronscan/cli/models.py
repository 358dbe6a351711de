"""Model commands: ``layers``, ``models``."""

from __future__ import annotations

from neuronscan.cli._common import FORMATTER, examples


def add_parsers(sub) -> dict:
    """Add this group's subcommands to ``sub``; return command name → handler."""
    p = sub.add_parser("layers", help="list a model's hookable layers and unit counts", formatter_class=FORMATTER,
                       description="List every named module with its output shape and number of units.",
                       epilog=examples("neuronscan layers shapesnet", "neuronscan layers resnet50 --filter 'layer4*'",
                                        "neuronscan layers vit_b_16 --filter 'encoder.layers.*' --depth 3"))
    p.add_argument("model")
    p.add_argument("--weights", help="weights (default: 'random' — the shapes do not depend on weights)",
                   default="random")
    p.add_argument("--source", default="auto",
                   choices=["auto", "builtin", "torchvision", "timm", "open_clip", "torchscript", "export", "factory"])
    p.add_argument("--filter", metavar="GLOB", help="only names matching this glob")
    p.add_argument("--depth", type=int, metavar="N", help="only names with at most N dotted parts")

    p = sub.add_parser("models", help="list registered models", formatter_class=FORMATTER,
                       description="List neuronscan's registered models. Any torchvision classification model "
                       "name, timm/<name>, open_clip/<arch>, a torch.export .pt2 file or a "
                       "package.module:function factory also works as model.name.",
                       epilog=examples("neuronscan models", "neuronscan models --torchvision"))
    p.add_argument("--torchvision", action="store_true", help="also list torchvision's classification models")

    return {"layers": _cmd_layers, "models": _cmd_models}


def _cmd_layers(args) -> int:
    import fnmatch

    from neuronscan.models import build_model, list_layers

    spec = build_model(args.model, source=args.source, weights=args.weights)
    rows = list_layers(spec)
    if args.filter:
        rows = [r for r in rows if fnmatch.fnmatchcase(r.name, args.filter)]
    if args.depth:
        rows = [r for r in rows if r.name.count(".") < args.depth]
    width = max([len(r.name) for r in rows] + [5])
    print(f"{'layer':<{width}}  {'type':<22} {'units':>6}  output shape")
    for r in rows:
        print(f"{r.name:<{width}}  {r.type:<22} {r.n_units:>6}  {tuple(r.shape)}")
    print(f"\n{len(rows)} layer(s) of {args.model} at {spec.input_size}px input; select with model.layers "
          "(exact names or globs, e.g. 'layer4*').")
    return 0


def _cmd_models(args) -> int:
    from neuronscan.models import registered_models

    entries = registered_models()
    width = max(len(n) for n in entries)
    print("registered models:")
    for name, entry in sorted(entries.items()):
        layers = f" (default layers: {', '.join(entry.default_layers)})" if entry.default_layers else ""
        print(f"  {name:<{width}}  {entry.description}{layers}")
    print("\nalso accepted as model.name: any torchvision classification model (e.g. resnet50, vit_b_16), "
          "timm/<name>, open_clip/<arch>, a torch.export .pt2 file, or package.module:function.")
    if args.torchvision:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
        print("\ntorchvision:", ", ".join(names))
    return 0
