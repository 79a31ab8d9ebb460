"""A rule whose output is a directory (a REAPI output directory, uploaded as a Tree)."""

def _tree_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    ctx.actions.run_shell(
        outputs = [out],
        command = ("mkdir -p {d}/sub && echo a > {d}/a.txt && echo b > {d}/sub/b.txt && " +
                   "printf '#!/bin/sh\\necho hi\\n' > {d}/run.sh && chmod +x {d}/run.sh").format(d = out.path),
    )
    return [DefaultInfo(files = depset([out]))]

tree = rule(implementation = _tree_impl)
