"""The kernel's log (/dev/kmsg).

reports.py   its records, and the OOM reports in them (the parser)
recovery.py  keeps every logged kill accounted for: claims reports for live
             records, and makes records of the kills the BPF side missed
"""
