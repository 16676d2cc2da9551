"""The image's Dockerfile directives the SDK has no public API for, and the SDK's own version."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chutes.image import Image



def append_env_directive(image: "Image", args: str) -> None:
    """An ENV line added to the SDK's Dockerfile (Image has no public API for a raw ENV)."""
    from chutes.image.directive import BaseDirective, DirectiveType

    image._directives.append(BaseDirective(DirectiveType.ENV, args))


def append_add_directive(image: "Image", sources: list[str], dest: str, chown: str | None = None,
                         upload: list[str] | None = None) -> None:
    """One ADD of several files or directories, `upload` being the files `chutes build` sends for it
    (each directive's `_build_context`). `Image.add` takes one glob per instruction, uploads a whole
    directory, caches included, and fails when its glob matches nothing."""
    from chutes.image.directive import BaseDirective, DirectiveType

    words = [*([f"--chown={chown}"] if chown else []), *sources, dest]
    directive = BaseDirective(DirectiveType.ADD, " ".join(words))
    directive._build_context = list(upload or [])
    image._directives.append(directive)


def build_context(image: "Image") -> list[str]:
    """Every file `chutes build` would send for the image."""
    return [path for directive in image._directives for path in directive._build_context]
