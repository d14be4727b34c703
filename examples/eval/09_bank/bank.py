class Account:
    pass
