#!/usr/bin/python3
"""Reference renderer for chat templates: python3-jinja2 set up as Hugging Face transformers sets it up
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols; tojson = json.dumps with
ensure_ascii=False; raise_exception; strftime_now).

  render_chat.py TEMPLATE_FILE CONTEXTS_JSON OUT_JSON
CONTEXTS_JSON is a list of objects (messages, add_generation_prompt, ...); OUT_JSON gets one string per
context, or {"error": message} when rendering raised.
"""
import json
import sys
from datetime import datetime

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now

with open(sys.argv[1]) as f:
    template = env.from_string(f.read())
with open(sys.argv[2]) as f:
    contexts = json.load(f)
out = []
for ctx in contexts:
    try:
        out.append(template.render(**ctx))
    except Exception as e:  # noqa: BLE001 - reported to the test
        out.append({"error": str(e)})
with open(sys.argv[3], "w") as f:
    json.dump(out, f, ensure_ascii=False)
