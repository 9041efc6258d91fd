// Stub SecureStorageBackup.exe that reads the password as masked keys with Console.ReadKey(true), as a tool
// that hides what is typed would. With stdin redirected .NET throws InvalidOperationException ("Cannot read
// keys when either application does not have a console or when console input has been redirected. Try
// Console.Read."); the stub prints it as an unhandled exception would and exits 1. On a console it writes the
// same key file as the readline stub. C# 5 (Add-Type on Windows PowerShell 5.1).
using System;
using System.IO;
using System.Security.Cryptography;
using System.Text;

public static class KeyfleetReadkeyStub
{
    public static int Main(string[] args)
    {
        if (args.Length != 2 || (args[0] != "Backup" && args[0] != "Restore"))
        {
            Console.Error.WriteLine("usage: SecureStorageBackup.exe Backup|Restore <file>");
            return 2;
        }
        Console.WriteLine("input: " + (Console.IsInputRedirected ? "redirected" : "console"));
        string first;
        string second;
        try
        {
            Console.Write("Please enter the password: ");
            first = ReadMasked();
            Console.Write("Please re-enter your password: ");
            second = ReadMasked();
        }
        catch (InvalidOperationException e)
        {
            Console.Error.WriteLine("Unhandled Exception: " + e);
            return 1;
        }
        if (first != second)
        {
            Console.Error.WriteLine("The passwords do not match.");
            return 4;
        }
        if (first.Length < 8)
        {
            Console.Error.WriteLine("The password must be at least 8 characters long.");
            return 5;
        }
        byte[] expected = KeyContent(first);
        if (args[0] == "Backup")
        {
            File.WriteAllBytes(args[1], expected);
            Console.WriteLine("Secure Storage Backup Complete");
            return 0;
        }
        if (!File.Exists(args[1]) || Convert.ToBase64String(File.ReadAllBytes(args[1])) != Convert.ToBase64String(expected))
        {
            Console.Error.WriteLine("The password is not the one this backup file was made with.");
            return 6;
        }
        Console.WriteLine("Secure Storage Restore Complete");
        return 0;
    }

    static string ReadMasked()
    {
        StringBuilder typed = new StringBuilder();
        while (true)
        {
            ConsoleKeyInfo key = Console.ReadKey(true);
            if (key.Key == ConsoleKey.Enter)
            {
                Console.WriteLine();
                return typed.ToString();
            }
            typed.Append(key.KeyChar);
            Console.Write("*");
        }
    }

    static byte[] KeyContent(string password)
    {
        StringBuilder hex = new StringBuilder();
        using (SHA256 sha256 = SHA256.Create())
        {
            foreach (byte b in sha256.ComputeHash(new UTF8Encoding(false).GetBytes(password)))
            {
                hex.Append(b.ToString("x2"));
            }
        }
        return Encoding.ASCII.GetBytes("KEYFLEET-STUB-KEY sha256:" + hex + "\n");
    }
}
