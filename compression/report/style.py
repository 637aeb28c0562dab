"""The report's stylesheet, inlined into the page (system fonts only: nothing is fetched)."""

CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--soft:#f8fafc;--blue:#2563eb;--good:#15803d;--bad:#b91c1c;--warn:#b45309}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--ink);background:#fff}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
header h1{margin:0;font-size:24px}
header .meta{color:var(--muted);margin:4px 0 0}
nav{position:sticky;top:0;background:#fffffff0;border-bottom:1px solid var(--line);margin:16px -28px 0;padding:8px 28px;z-index:1}
nav a{color:var(--blue);text-decoration:none;margin-right:18px;font-weight:500}
section{margin-top:28px}
h2{font-size:19px;border-bottom:2px solid var(--line);padding-bottom:4px;margin:0 0 12px}
h3{font-size:16px;margin:0 0 4px}
section>h3{margin-top:18px}
h4{font-size:14px;margin:16px 0 6px}
p{margin:6px 0}
.note{color:var(--muted);font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:12px;margin-bottom:12px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px;background:var(--soft)}
.card-title{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card-value{font-size:18px;margin:2px 0}
.card-value .before{color:var(--muted)}
.card-value .after{font-weight:650}
.card-change{font-weight:600}
.card-sub{color:var(--muted);font-size:12px}
.good{color:var(--good)}.bad{color:var(--bad)}.warn{color:var(--warn)}.neutral{color:var(--muted)}
.figure{margin:10px 0;overflow-x:auto}
.figure.row{display:flex;flex-wrap:wrap;gap:16px}
svg.chart{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;margin:8px 0;font-size:13px;width:auto;max-width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
thead th{background:var(--soft);font-weight:600;color:#334155}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{color:var(--muted);font-weight:500}
table.compact td,table.compact th{padding:2px 10px}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600;border:1px solid currentColor;white-space:nowrap}
.meter{display:inline-block;width:70px;height:8px;background:var(--line);border-radius:4px;vertical-align:middle;overflow:hidden}
.meter .fill{display:block;height:100%;background:var(--blue)}
.meter .fill.warm{background:#f59e0b}
article.step{border:1px solid var(--line);border-radius:8px;padding:14px 16px;margin:14px 0}
.facts{color:#334155}
ul{margin:4px 0;padding-left:22px}
.callout{border-left:4px solid var(--warn);background:#fffbeb;padding:8px 12px;border-radius:4px}
.callout.bad{border-color:var(--bad);background:#fef2f2}
details{margin:8px 0}
summary{cursor:pointer;color:var(--blue)}
pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:10px;overflow:auto;max-height:420px;font-size:12px}
code{font-size:12px}
footer{margin-top:36px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:8px}
@media print{nav{position:static}details{display:block}}
"""
