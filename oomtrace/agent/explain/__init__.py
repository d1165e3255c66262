"""Why a kill happened, in plain words.

choice.py           why this victim: the kernel's choice worked out again
verdicts.py         every verdict of a finished record (the runtimes' own verdicts
                    live beside their readers, in runtimes/*/verdicts.py)
memory_verdicts.py  where the memory was, from the breakdown
death_verdicts.py   a runtime's own OOM death
wording.py          how verdicts are worded: sizes, the Verdict message
"""
