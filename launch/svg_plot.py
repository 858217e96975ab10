"""Line plots as plain SVG (no plotting package needed), for the experiment summaries."""

COLOURS = ["#000000", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22"]


def line_plot(curves, path, xlabel, ylabel, clip_spikes=True, hline=None):
    """curves: {label: [(x, y), ...]}; hline: optional (y, label) reference line."""
    width, height, pad = 760, 460, 60
    xs = [x for c in curves.values() for x, _ in c]
    ys = [y for c in curves.values() for _, y in c] + ([hline[0]] if hline else [])
    if not xs:
        return
    x0, x1 = min(0.0, min(xs)), max(xs)
    y0, y1 = min(ys), max(ys)
    if clip_spikes:  # keep early spikes from flattening the rest
        y1 = min(y1, y0 + 3 * (sorted(ys)[len(ys) // 2] - y0) + 1e-9)
    if y1 == y0:
        y1 = y0 + 1
    sx = lambda x: pad + (width - 2 * pad) * (x - x0) / ((x1 - x0) or 1)
    sy = lambda y: height - pad - (height - 2 * pad) * (min(y, y1) - y0) / (y1 - y0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle">{xlabel}</text>',
           f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" '
           f'text-anchor="middle">{ylabel}</text>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{pad - 5}" y="{sy(y) + 4}" text-anchor="end">{y:.3g}</text>')
        x = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{sx(x)}" y="{height - pad + 16}" text-anchor="middle">{x:.3g}</text>')
    if hline:
        out.append(f'<line x1="{pad}" y1="{sy(hline[0]):.1f}" x2="{width - pad}" '
                   f'y2="{sy(hline[0]):.1f}" stroke="#999" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{pad + 5}" y="{sy(hline[0]) - 4:.1f}" fill="#666">{hline[1]}</text>')
    for i, (name, points) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{line}"/>')
        out.append(f'<text x="{width - pad - 260}" y="{pad + 16 * i}" fill="{colour}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
