"""Prompt templates: Jinja2 files in shared/templates/, rendered with the user's text.

Known French public-administration acronyms in the text are expanded first (shared/acronyms.py).
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

import jinja2

from shared.acronyms import acronyms_version, expand_acronyms

_SUFFIX = ".jinja2"


@functools.cache
def _sources() -> dict[str, str]:
    """Each template's text, by name: the package's files, read once."""
    folder = resources.files("shared").joinpath("templates")
    return {
        item.name.removesuffix(_SUFFIX): item.read_text(encoding="utf-8")
        for item in folder.iterdir()
        if item.name.endswith(_SUFFIX)
    }


ACRONYMS_SEPARATOR = " acronyms@"


@functools.cache
def template_tag(template: str) -> str:
    """`<name>@<12 hex digits of the SHA-256 of its text> acronyms@<acronyms_version()>`: which template, in which
    version, and which acronym list a job's prompt was rendered with at its submission (its provenance); KeyError
    for an unknown name."""
    digest = hashlib.sha256(_sources()[template].encode()).hexdigest()[:12]
    return f"{template}@{digest}{ACRONYMS_SEPARATOR}{acronyms_version()}"


@functools.cache
def _environment() -> jinja2.Environment:
    sources = _sources()
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
