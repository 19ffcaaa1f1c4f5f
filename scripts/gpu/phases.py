#!/usr/bin/env python3
"""Median phase durations of `ctr run --rm` from diag.txt (RUN lines + raw ctr events): start to
TaskCreate, to TaskStart, to TaskExit, to TaskDelete, to ctr exit. Usage: phases.py diag.txt"""
import re,statistics,datetime,sys
runs={}; ev={}
for l in open(sys.argv[1]):
    p=l.split()
    if l.startswith('RUN '):
        runs[p[1]]=(float(p[2]),float(p[3]))
    elif '/tasks/' in l:
        m=re.match(r'(\S+ \S+) \S+ \S+ \S+ (/tasks/\w+) .*"container_id":"(\w+)"',l)
        if not m: continue
        t=datetime.datetime.strptime(m.group(1)[:26],'%Y-%m-%d %H:%M:%S.%f').replace(tzinfo=datetime.timezone.utc).timestamp()
        ev.setdefault(m.group(3),{})[m.group(2)]=t
ph={}
for cid,(s,e) in runs.items():
    x=ev.get(cid,{})
    try: ph.setdefault(cid[1],[]).append([(x['/tasks/create']-s)*1e3,(x['/tasks/start']-x['/tasks/create'])*1e3,(x['/tasks/exit']-x['/tasks/start'])*1e3,(x['/tasks/delete']-x['/tasks/exit'])*1e3,(e-x['/tasks/delete'])*1e3,(e-s)*1e3])
    except KeyError as k: pass
for v in sorted(ph):
    cols=list(zip(*ph[v]))
    print(v,' '.join('%s=%.1f'%(n,statistics.median(c)) for n,c in zip(['created','started','exit','deleted','end','total'],cols)))
