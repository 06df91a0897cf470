"""Prompt templates: Jinja2 files in shared/templates/, rendered with the user's text.

Known French public-administration acronyms in the text are expanded first (shared/acronyms.py).
"""

from __future__ import annotations

import functools
from importlib import resources

import jinja2

from shared.acronyms import expand_acronyms

_SUFFIX = ".jinja2"


@functools.cache
def _environment() -> jinja2.Environment:
    folder = resources.files("shared").joinpath("templates")
    sources = {
        item.name.removesuffix(_SUFFIX): item.read_text(encoding="utf-8")
        for item in folder.iterdir()
        if item.name.endswith(_SUFFIX)
    }
    # Plain text, not HTML: no autoescape; a missing variable is an error, not an empty string.
    return jinja2.Environment(
        loader=jinja2.DictLoader(sources),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )


@functools.cache
def template_names() -> tuple[str, ...]:
    """The templates' names, sorted; they are files of the package, read once."""
    return tuple(sorted(_environment().list_templates()))


def render_prompt(template: str, text: str) -> str:
    """The prompt of `template` for the user's `text` (acronyms expanded); KeyError for an unknown name."""
    try:
        compiled = _environment().get_template(template)
    except jinja2.TemplateNotFound:
        raise KeyError(template) from None
    return compiled.render(text=expand_acronyms(text)).strip() + "\n"
