"""placeholder"""

def cases():
    return []
