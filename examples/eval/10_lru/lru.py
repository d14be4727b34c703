class LRUCache:
    pass
