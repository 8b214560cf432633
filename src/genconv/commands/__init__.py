"""CLI verbs, one module per model family; importing a module registers its commands on
``genconv.cli.cli`` (top-level verbs) or ``genconv.cli.train`` (``genconv train KIND``)."""
import importlib

for _name in ("cdbn", "deconv", "convnet", "specificity"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as e:  # a family not written yet
        if e.name != f"{__name__}.{_name}":
            raise
