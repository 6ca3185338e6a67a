"""The build's errors: one base class, importable without torch, so ``segedge-build`` can
turn any of them into one line (data, download, bundle) in any install."""

from __future__ import annotations

import argparse

#: modules of the ``build`` extra: missing in an agent-only install
BUILD_EXTRA_MODULES = ("torch", "torchvision", "segmentation_models_pytorch", "timm", "nncf",
                       "tqdm", "matplotlib", "PIL", "onnx")
#: segedge is not published on PyPI: the extra installs from a checkout (CPU-only torch:
#: docs/build.md#install)
INSTALL_HINT = "pip install -c constraints.txt -e '.[build]' in the segedge checkout"


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Every segedge-build command's --help: its docstring as written, and the defaults
    (not for an option whose help already says its default, nor a ``None`` that only
    means "not given")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class BuildError(Exception):
    """A build step cannot do what was asked; the message says what and where."""


class BundleError(BuildError):
    """The bundle cannot be built as asked (e.g. the INT8 accuracy gate failed)."""


def missing_build_extra(exc: BaseException) -> str:
    """The ``build`` extra's module whose absence raised ``exc``, or '' for anything else."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return ""
    root = exc.name.split(".")[0]
    return root if root in BUILD_EXTRA_MODULES else ""
